"""Value substitution: E2E rows whose names are invented, so copying is learned, not memorized.

A substituted row replaces the value of each substituted slot (``name``, ``near``) with an
invented name, in the MR and, case-insensitively, at every place the reference spells the
original value. Names are built from syllables; training and evaluation draw from two disjoint
syllable sets, so no name invented for evaluation (the *fresh* validation group) can occur in
substituted training data.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from skipdecode.training.e2e import E2ERow
from skipdecode.training.e2e_split import format_mr, parse_mr

SUBSTITUTED_SLOTS = ("name", "near")
TRAIN_SYLLABLES = (
    "bar", "ben", "cor", "dal", "fen", "gar", "hol", "kel", "lin", "mor",
    "nor", "pel", "ran", "sel", "tor", "val", "wen", "zan", "bri", "dun",
)  # fmt: skip
EVAL_SYLLABLES = (
    "ak", "ep", "ix", "oj", "uv", "qua", "ryx", "sho", "tza", "vok",
    "yum", "zei", "ghu", "plo", "kri", "mev", "nox", "fyu", "jad", "wix",
)  # fmt: skip
_PATTERNS = ("{w}", "The {w}", "{w} {v}", "The {w} {v}", "{w} House", "{w}'s Kitchen")


def invented_name(rng: random.Random, syllables: Sequence[str]) -> str:
    """A name like ``The Korvalen`` or ``Dalwen Bri``: 2-3 syllable words in one of a few
    patterns."""

    def word() -> str:
        return "".join(rng.choice(syllables) for _ in range(rng.choice((2, 3)))).capitalize()

    return rng.choice(_PATTERNS).format(w=word(), v=word())


def substitute(
    row: E2ERow,
    rng: random.Random,
    syllables: Sequence[str] = TRAIN_SYLLABLES,
    slots: Sequence[str] = SUBSTITUTED_SLOTS,
) -> E2ERow:
    """``row`` with each of ``slots`` present in its MR given an invented value, in the MR and
    everywhere the reference spells the old value (any case)."""
    values = parse_mr(row.mr)
    reference = row.ref
    for slot in slots:
        old = values.get(slot)
        if not old:
            continue
        new = invented_name(rng, syllables)
        values[slot] = new
        reference = re.sub(re.escape(old), lambda _m, new=new: new, reference, flags=re.I)
    return E2ERow(format_mr(values), reference)


def substitute_rows(rows: Sequence[E2ERow], fraction: float, seed: int = 0) -> list[E2ERow]:
    """Training rows with a seeded ``fraction`` of them substituted (each row decided alone)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"substitute fraction must be in [0, 1] (got {fraction})")
    out = []
    for index, row in enumerate(rows):
        rng = random.Random(f"substitute:{seed}:{index}")
        out.append(substitute(row, rng) if rng.random() < fraction else row)
    return out


def fresh_mrs(
    mrs: Sequence[str], references: Sequence[Sequence[str]], seed: int = 0
) -> tuple[list[str], list[list[str]]]:
    """Validation MRs with evaluation-only invented names (one per MR, shared by all of its
    references): the *fresh* group of ``eval e2e``."""
    fresh_mr: list[str] = []
    fresh_refs: list[list[str]] = []
    for index, (mr, refs) in enumerate(zip(mrs, references, strict=True)):
        key = f"fresh:{seed}:{index}"
        rows = [substitute(E2ERow(mr, ref), random.Random(key), EVAL_SYLLABLES) for ref in refs]
        fresh_mr.append(rows[0].mr)
        fresh_refs.append([r.ref for r in rows])
    return fresh_mr, fresh_refs
