"""E2E meaning representations and the two validation splits.

An MR is ``slot[value], slot[value], ...`` (``name[The Eagle], eatType[coffee shop], ...``).

Two ways to hold out validation data:

- ``mr`` (:data:`skipdecode.training.e2e.SPLIT_RULE`): a stable hash of the MR string. E2E's
  development set has only 20 restaurant names, so every validation MR names a restaurant the
  model trained on: this split measures memorized entities.
- ``name`` (:data:`NAME_SPLIT_RULE`): a restaurant name is *unseen* when a stable hash of the
  name falls under ``name_val_percent``; every MR of an unseen name is validation data, and no
  unseen name occurs in a training MR. Among the MRs of the other (*seen*) names, the ``mr`` rule
  holds out a seen-name validation set, so one evaluation reports both, side by side.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from skipdecode.training.e2e import DEFAULT_VAL_PERCENT, E2ERow, is_validation

SPLITS = ("mr", "name")
DEFAULT_NAME_VAL_PERCENT = 25  # on the dev set: 4 of 20 names, 99 of 547 MRs, 845 of 4,672 rows
NAME_SPLIT_RULE = (
    "unseen name: int(hashlib.md5(name.encode('utf-8')).hexdigest(), 16) % 100 <"
    " name_val_percent -> every MR naming it is validation; other MRs: the MR rule"
    " (md5 of the MR % 100 < val_percent -> validation, seen name)"
)
_SLOT = re.compile(r"\s*([^\[\],]+?)\s*\[([^\]]*)\]\s*,?")


def parse_mr(mr: str) -> dict[str, str]:
    """``{slot: value}`` in MR order; raises ValueError on text that is not an MR."""
    slots: dict[str, str] = {}
    position = 0
    for match in _SLOT.finditer(mr):
        if match.start() != position:
            break
        slots[match.group(1)] = match.group(2).strip()
        position = match.end()
    if position != len(mr) or not slots:
        raise ValueError(f"not an E2E MR (slot[value], ...): {mr!r}")
    return slots


def format_mr(slots: dict[str, str]) -> str:
    """The MR string of ``slots`` (the inverse of :func:`parse_mr`)."""
    return ", ".join(f"{slot}[{value}]" for slot, value in slots.items())


def mr_name(mr: str) -> str | None:
    """The ``name`` slot's value, or None."""
    return parse_mr(mr).get("name")


def is_unseen_name(name: str | None, name_val_percent: int = DEFAULT_NAME_VAL_PERCENT) -> bool:
    """The name rule (:data:`NAME_SPLIT_RULE`); an MR without a name is never unseen."""
    if name is None:
        return False
    return int(hashlib.md5(name.encode("utf-8")).hexdigest(), 16) % 100 < name_val_percent


def validation_group(
    mr: str,
    split_by: str = "mr",
    val_percent: int = DEFAULT_VAL_PERCENT,
    name_val_percent: int = DEFAULT_NAME_VAL_PERCENT,
) -> str | None:
    """``"unseen"`` or ``"seen"`` for a validation MR (by its name), None for a training MR."""
    check_split(split_by, val_percent, name_val_percent)
    if split_by == "name" and is_unseen_name(mr_name(mr), name_val_percent):
        return "unseen"
    return "seen" if is_validation(mr, val_percent) else None


def check_split(split_by: str, val_percent: int, name_val_percent: int) -> None:
    """Raise ValueError naming the bad argument."""
    if split_by not in SPLITS:
        raise ValueError(f"split_by must be one of {', '.join(SPLITS)} (got {split_by!r})")
    for field, value in (("val_percent", val_percent), ("name_val_percent", name_val_percent)):
        if not 0 <= value <= 100:
            raise ValueError(f"{field} must be in [0, 100] (got {value})")


def split_rows(
    rows: Iterable[E2ERow],
    split_by: str = "mr",
    val_percent: int = DEFAULT_VAL_PERCENT,
    name_val_percent: int = DEFAULT_NAME_VAL_PERCENT,
) -> tuple[list[E2ERow], list[E2ERow]]:
    """(train, validation) by ``split_by``; every row of an MR lands on the same side."""
    check_split(split_by, val_percent, name_val_percent)
    train: list[E2ERow] = []
    val: list[E2ERow] = []
    groups: dict[str, str | None] = {}
    for row in rows:
        if row.mr not in groups:
            groups[row.mr] = validation_group(row.mr, split_by, val_percent, name_val_percent)
        (train if groups[row.mr] is None else val).append(row)
    return train, val


def split_record(split_by: str, val_percent: int, name_val_percent: int) -> dict:
    """What a checkpoint records about its split (merged into skip_schedule.json ``data``)."""
    from skipdecode.training.e2e import SPLIT_RULE

    record = {"split_by": split_by, "split_rule": SPLIT_RULE, "val_percent": val_percent}
    if split_by == "name":
        record.update(name_split_rule=NAME_SPLIT_RULE, name_val_percent=name_val_percent)
    return record


def select_split(
    rows: list[E2ERow],
    split: str,
    split_by: str = "mr",
    val_percent: int = DEFAULT_VAL_PERCENT,
    name_val_percent: int = DEFAULT_NAME_VAL_PERCENT,
) -> list[E2ERow]:
    """``split`` is ``train``, ``val`` or ``all``."""
    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be train, val or all (got {split!r})")
    if split == "all":
        return rows
    train, val = split_rows(rows, split_by, val_percent, name_val_percent)
    return train if split == "train" else val
