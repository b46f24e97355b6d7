"""Copy prompts for chat self-distillation (``skipdecode train --copy-prompts N``).

The chat analogue of E2E value substitution: besides the dataset's prompts, the student trains on
prompts that ask for an invented span back (the copy probe's five kinds, drawn from another seed),
so skipping learns to copy from the prompt instead of losing it. The targets stay the model's
own: the teacher answers these prompts like any other, and an answer is kept only when the
teacher itself copied the span (:func:`copy_probe.span_found`), so the student never learns a
wrong copy. Items are drawn from ``random.Random(TRAIN_SEED_OFFSET + seed)`` and any item whose
span also occurs among the first ``EVAL_GUARD_ITEMS`` evaluation items (seed 0, the probe's
default) is dropped, so the probe in ``skipdecode eval copy`` stays unseen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from skipdecode.training.chat import ChatPrompt, prompt_ids
from skipdecode.training.copy_probe import ProbeItem, make_probe, span_found

TRAIN_SEED_OFFSET = 1_000_003
EVAL_GUARD_ITEMS = 1000


def copy_training_items(num_items: int, seed: int = 0) -> list[ProbeItem]:
    """``num_items`` probe items for training, none sharing a span with the evaluation probe."""
    if num_items < 0:
        raise ValueError(f"copy_prompts must be >= 0 (got {num_items})")
    if num_items == 0:
        return []
    held_out = {item.span for item in make_probe(EVAL_GUARD_ITEMS, 0)}
    drawn = make_probe(num_items * 2, TRAIN_SEED_OFFSET + seed)  # room for the rare collision
    items = [item for item in drawn if item.span not in held_out][:num_items]
    if len(items) < num_items:
        raise ValueError(f"could not draw {num_items} copy prompts clear of the evaluation probe")
    return items


def copy_chat_prompts(tokenizer, items: Sequence[ProbeItem]) -> list[ChatPrompt]:
    """One single-turn chat prompt per item (ids ``copy-<i>``), as the probe renders it."""
    prompts = []
    for index, item in enumerate(items):
        messages = ({"role": "user", "content": item.prompt},)
        ids = prompt_ids(tokenizer, messages)
        prompts.append(ChatPrompt(f"copy-{index}", ids, [], messages))
    return prompts


def keep_correct_copies(
    tokenizer,
    items: Sequence[ProbeItem],
    prompts: Sequence[ChatPrompt],
    answers: Mapping[str, list[int]],
) -> tuple[list[tuple[ChatPrompt, list[int]]], dict[str, Any]]:
    """(prompt, teacher answer) pairs whose answer holds the span, and a record of the counts."""
    kept = []
    per_kind: dict[str, list[int]] = {}
    for item, prompt in zip(items, prompts):
        answer = answers.get(prompt.id) or []
        text = tokenizer.decode(answer, skip_special_tokens=True)
        ok = bool(answer) and span_found(item.span, text)
        counts = per_kind.setdefault(item.kind, [0, 0])
        counts[0] += ok
        counts[1] += 1
        if ok:
            kept.append((prompt, answer))
    record = {
        "num_prompts": len(prompts),
        "num_kept": len(kept),
        "kept_per_kind": {kind: f"{a}/{b}" for kind, (a, b) in per_kind.items()},
        "rule": "the teacher's answer is kept when it holds the span (copy probe scoring)",
        "seed": f"random.Random({TRAIN_SEED_OFFSET} + seed)",
        "eval_guard": f"no span of the first {EVAL_GUARD_ITEMS} evaluation items (seed 0)",
    }
    return kept, record
