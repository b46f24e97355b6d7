"""The name-disjoint E2E split, MR parsing, and value substitution."""

from __future__ import annotations

import hashlib
import random
import re

import pytest

from skipdecode.training import e2e
from skipdecode.training.e2e import E2ERow
from skipdecode.training.e2e_split import (
    format_mr,
    is_unseen_name,
    mr_name,
    parse_mr,
    split_record,
    split_rows,
    validation_group,
)
from skipdecode.training.e2e_substitute import (
    EVAL_SYLLABLES,
    TRAIN_SYLLABLES,
    fresh_mrs,
    substitute,
    substitute_rows,
)


@pytest.fixture(scope="module")
def dev_rows() -> list[E2ERow]:
    return e2e.read_e2e_csv(e2e.DEFAULT_E2E_CSV)


def test_parse_mr_round_trips() -> None:
    mr = "name[The Eagle], eatType[coffee shop], customer rating[5 out of 5], near[Burger King]"
    slots = parse_mr(mr)
    assert slots == {
        "name": "The Eagle",
        "eatType": "coffee shop",
        "customer rating": "5 out of 5",
        "near": "Burger King",
    }
    assert format_mr(slots) == mr
    assert mr_name(mr) == "The Eagle"
    assert mr_name("eatType[pub]") is None


@pytest.mark.parametrize("bad", ["", "no brackets here", "name[The Eagle] trailing", "name[x"])
def test_parse_mr_refuses_text_that_is_not_an_mr(bad: str) -> None:
    with pytest.raises(ValueError, match="not an E2E MR"):
        parse_mr(bad)


def test_every_dev_mr_parses(dev_rows: list[E2ERow]) -> None:
    for row in dev_rows:
        assert format_mr(parse_mr(row.mr)) == row.mr


def test_name_rule_is_the_documented_hash() -> None:
    for name in ("The Eagle", "Browns Cambridge", "Clowns", "Cotto"):
        bucket = int(hashlib.md5(name.encode("utf-8")).hexdigest(), 16) % 100
        assert is_unseen_name(name, 25) == (bucket < 25)
    assert not is_unseen_name(None, 100)


def test_name_split_holds_no_name_on_both_sides(dev_rows: list[E2ERow]) -> None:
    train, val = split_rows(dev_rows, "name", 15, 25)
    assert len(train) + len(val) == len(dev_rows)
    train_names = {mr_name(r.mr) for r in train}
    unseen = {mr_name(r.mr) for r in val if validation_group(r.mr, "name", 15, 25) == "unseen"}
    seen = {mr_name(r.mr) for r in val if validation_group(r.mr, "name", 15, 25) == "seen"}
    assert unseen and seen
    assert not unseen & train_names
    assert seen <= train_names  # seen-name validation MRs name restaurants trained on
    assert not {r.mr for r in train} & {r.mr for r in val}
    # the dev set's documented figures (e2e_split.DEFAULT_NAME_VAL_PERCENT)
    assert len(unseen) == 4
    assert len({r.mr for r in val if mr_name(r.mr) in unseen}) == 99


def test_name_split_is_stable_under_row_order(dev_rows: list[E2ERow]) -> None:
    shuffled = list(dev_rows)
    random.Random(3).shuffle(shuffled)
    _, val_a = split_rows(dev_rows, "name", 15, 25)
    _, val_b = split_rows(shuffled, "name", 15, 25)
    assert {r.mr for r in val_a} == {r.mr for r in val_b}


def test_mr_split_matches_the_existing_rule(dev_rows: list[E2ERow]) -> None:
    assert split_rows(dev_rows, "mr", 15) == e2e.split_by_mr(dev_rows, 15)


def test_split_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="split_by"):
        split_rows([], "names")
    with pytest.raises(ValueError, match="name_val_percent"):
        split_rows([], "name", 15, 101)


def test_split_record_names_the_rules() -> None:
    record = split_record("name", 15, 25)
    assert record["split_by"] == "name" and record["name_val_percent"] == 25
    assert "md5" in record["name_split_rule"] and "md5" in record["split_rule"]
    assert "name_split_rule" not in split_record("mr", 15, 25)


def test_substitution_keeps_mr_and_reference_consistent(dev_rows: list[E2ERow]) -> None:
    checked = 0
    for index, row in enumerate(dev_rows[:400]):
        new = substitute(row, random.Random(index))
        old_slots, new_slots = parse_mr(row.mr), parse_mr(new.mr)
        assert old_slots.keys() == new_slots.keys()
        for slot, value in old_slots.items():
            if slot not in ("name", "near"):
                assert new_slots[slot] == value
                continue
            fresh = new_slots[slot]
            assert fresh != value
            # everywhere the reference spelled the old value, it now spells the new one
            assert not re.search(re.escape(value), new.ref, re.I)
            occurrences = len(re.findall(re.escape(value), row.ref, re.I))
            assert new.ref.count(fresh) >= occurrences
            checked += occurrences
        assert re.sub(r"\s+", "", new.ref) != "" and new.mr != row.mr
    assert checked > 300


def test_substitution_by_hand() -> None:
    row = E2ERow(
        "name[The Mill], eatType[pub], near[Café Sicilia]",
        "The Mill is a pub near Café Sicilia. the mill's food is fine.",
    )
    new = substitute(row, random.Random(0))
    slots = parse_mr(new.mr)
    name, near = slots["name"], slots["near"]
    assert slots["eatType"] == "pub"
    assert new.ref == f"{name} is a pub near {near}. {name}'s food is fine."


def test_substitute_rows_fraction_and_seed(dev_rows: list[E2ERow]) -> None:
    rows = dev_rows[:1000]
    half = substitute_rows(rows, 0.5, seed=1)
    changed = sum(a != b for a, b in zip(rows, half))
    assert 400 < changed < 600
    assert half == substitute_rows(rows, 0.5, seed=1)
    assert half != substitute_rows(rows, 0.5, seed=2)
    assert substitute_rows(rows, 0.0) == rows
    with pytest.raises(ValueError, match="fraction"):
        substitute_rows(rows, 1.5)


def test_fresh_names_never_come_from_the_training_syllables(dev_rows: list[E2ERow]) -> None:
    assert not set(TRAIN_SYLLABLES) & set(EVAL_SYLLABLES)
    groups = e2e.group_by_mr(dev_rows[:300])
    mrs, refs = fresh_mrs(list(groups), list(groups.values()))
    for mr, old_mr, new_refs in zip(mrs, groups, refs):
        name = parse_mr(mr)["name"]
        assert name != parse_mr(old_mr)["name"]
        word = name.removeprefix("The ").split(" ")[0].split("'")[0].lower()
        assert any(word.startswith(s) for s in EVAL_SYLLABLES)
        assert not any(word.startswith(s) for s in TRAIN_SYLLABLES)
        assert len(new_refs) == len(groups[old_mr])
    assert fresh_mrs(list(groups), list(groups.values())) == (mrs, refs)
