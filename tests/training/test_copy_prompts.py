"""Copy prompts for chat distillation: seeded, clear of the evaluation probe, and only the
teacher's correct copies kept."""

from __future__ import annotations

import pytest

from skipdecode.training.chat import ChatPrompt
from skipdecode.training.copy_probe import ProbeItem, make_probe
from skipdecode.training.copy_prompts import (
    EVAL_GUARD_ITEMS,
    copy_training_items,
    keep_correct_copies,
)


class CharTokenizer:
    """Token id = character code: answers are written as text in the test."""

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)


def ids(text: str) -> list[int]:
    return [ord(c) for c in text]


def test_items_are_seeded_and_share_no_span_with_the_evaluation_probe():
    first = copy_training_items(60, seed=0)
    assert first == copy_training_items(60, seed=0)
    assert first != copy_training_items(60, seed=1)
    assert len(first) == 60
    held_out = {item.span for item in make_probe(EVAL_GUARD_ITEMS, 0)}
    assert not {item.span for item in first} & held_out
    assert {item.kind for item in first} == {"name", "number", "identifier", "quote", "extract"}
    assert copy_training_items(0) == []
    with pytest.raises(ValueError, match="copy_prompts"):
        copy_training_items(-1)


def test_only_answers_that_hold_the_span_are_kept():
    items = [
        ProbeItem("name", "Repeat the name Velkor Amtrisse.", "Velkor Amtrisse"),
        ProbeItem("number", "Repeat 482139.", "482139"),
        ProbeItem("number", "Repeat 7731.", "7731"),
        ProbeItem("identifier", "Repeat fetch_pool.", "fetch_pool"),
    ]
    prompts = [ChatPrompt(f"copy-{i}", [1, 2, i], [], ()) for i in range(4)]
    answers = {
        "copy-0": ids('The name is "Velkor Amtrisse".'),  # right: quotes around it
        "copy-1": ids("4821390"),  # wrong: a longer number that contains the span
        "copy-2": [],  # no answer at all
        "copy-3": ids("`fetch_pool`"),  # right
    }
    kept, record = keep_correct_copies(CharTokenizer(), items, prompts, answers)
    assert [p.id for p, _ in kept] == ["copy-0", "copy-3"]
    assert kept[1][1] == ids("`fetch_pool`")
    assert record["num_prompts"] == 4 and record["num_kept"] == 2
    assert record["kept_per_kind"] == {"name": "1/1", "number": "0/2", "identifier": "1/1"}
