"""``eval e2e``'s MR groups (seen, unseen, fresh) and the overlap checks of its checkpoints."""

from __future__ import annotations

import pytest

from skipdecode.training import e2e
from skipdecode.training.e2e_groups import build_eval_set, score_group
from skipdecode.training.e2e_split import mr_name, select_split
from skipdecode.training.evaluate import EvalConfig, ModelSpec, check_no_overlap


def _config(split_by: str = "name", **kw) -> EvalConfig:
    return EvalConfig(models=(ModelSpec("m", None),), out_dir="unused", split_by=split_by, **kw)


def test_dev_set_groups_on_the_name_split() -> None:
    cfg = _config()
    rows = select_split(e2e.read_e2e_csv(e2e.DEFAULT_E2E_CSV), "val", "name", 15, 25)
    eval_set = build_eval_set(e2e.group_by_mr(rows), cfg)
    sizes = {g: len(eval_set.indices(g)) for g in ("all", "seen", "unseen", "fresh")}
    assert sizes == {"all": 156, "seen": 57, "unseen": 99, "fresh": 156}
    unseen_names = {mr_name(eval_set.mrs[i]) for i in eval_set.indices("unseen")}
    seen_names = {mr_name(eval_set.mrs[i]) for i in eval_set.indices("seen")}
    assert len(unseen_names) == 4 and not unseen_names & seen_names
    fresh_names = {mr_name(eval_set.mrs[i]) for i in eval_set.indices("fresh")}
    assert not fresh_names & (unseen_names | seen_names)


def test_mr_split_has_only_seen_names_and_fresh_is_optional() -> None:
    cfg = _config("mr")
    rows = select_split(e2e.read_e2e_csv(e2e.DEFAULT_E2E_CSV), "val", "mr", 15)
    eval_set = build_eval_set(e2e.group_by_mr(rows), cfg, fresh=False)
    assert set(eval_set.groups) == {"seen"}
    assert eval_set.indices("all") == eval_set.indices("seen")


def test_score_group_by_hand() -> None:
    groups = {
        "name[Alpha], food[Thai]": ["Alpha serves Thai food."],
        "name[Beta], area[riverside]": ["Beta is by the riverside."],
    }
    eval_set = build_eval_set(groups, _config("mr"), fresh=False)
    # first text realizes both values, the second drops the name and keeps the area
    scores = score_group(eval_set, ["Alpha serves Thai food.", "It is by the river."], "all", 50, 0)
    assert scores is not None and scores["num_mrs"] == 2
    assert scores["ser"] == pytest.approx(100 * 1 / 4)
    assert scores["name_copied"] == pytest.approx(50.0)
    assert score_group(eval_set, ["a", "b"], "unseen", 50, 0) is None


def test_checkpoints_must_not_be_scored_on_their_training_data() -> None:
    trained_by_name = {"split_by": "name", "val_percent": 15, "name_val_percent": 25}
    check_no_overlap("ok", trained_by_name, _config("name"))
    check_no_overlap("ok", trained_by_name, _config("mr"))  # its training holds no MR-val MR
    with pytest.raises(ValueError, match="seen names unseen"):
        check_no_overlap("by-mr", {"val_percent": 15}, _config("name"))
    with pytest.raises(ValueError, match="name_val_percent=25"):
        check_no_overlap("x", trained_by_name, _config("name", name_val_percent=30))
    with pytest.raises(ValueError, match="val_percent=20"):
        check_no_overlap("x", {"val_percent": 20}, _config("mr"))


def test_eval_config_names_a_bad_split() -> None:
    with pytest.raises(ValueError, match="split_by"):
        _config("names")
