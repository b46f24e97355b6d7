"""Training examples from ``--data``: E2E CSV rows, or chat prompts with their targets.

Three objectives decide where the targets come from:

- ``ce``: the data's own answers (E2E references, chat answers), cross-entropy; a KL term only
  if ``--kl-weight`` asks for one;
- ``kl``: the data's own answers, cross-entropy + KL toward the full-depth teacher;
- ``distill``: the teacher's own greedy answers to the training prompts (chat data only),
  generated with the engine and cached (:mod:`teacher`), cross-entropy + KL toward the teacher.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from skipdecode import datasets
from skipdecode.training import chat, copy_prompts, e2e, e2e_split, e2e_substitute, teacher
from skipdecode.training.batch import Example

OBJECTIVES = ("ce", "kl", "distill")
DEFAULT_KL_WEIGHT = {"ce": 0.0, "kl": 1.0, "distill": 1.0}


@dataclass(frozen=True)
class TrainingData:
    """The examples of one run and what its checkpoint records about them."""

    examples: list[Example]
    record: dict[str, Any]  # skip_schedule.json "data"
    prompt_format: dict[str, Any]  # skip_schedule.json "prompt_format"


def load_training_data(cfg, tokenizer, max_model_len: int) -> TrainingData:
    """Examples for ``cfg`` (a TrainConfig): E2E or chat, by ``cfg.data``."""
    if not datasets.is_chat_data(cfg.data):
        if cfg.objective == "distill":
            raise ValueError("--objective distill needs chat data (sharegpt, .jsonl or .json)")
        return load_e2e_data(cfg, tokenizer)
    prompts, record = chat_split_prompts(cfg, tokenizer, "train", max_model_len, cfg.max_rows)
    if cfg.copy_prompts and cfg.objective != "distill":
        raise ValueError("--copy-prompts needs --objective distill (the teacher answers them)")
    if cfg.objective == "distill":
        items = copy_prompts.copy_training_items(cfg.copy_prompts, cfg.seed)
        extra = copy_prompts.copy_chat_prompts(tokenizer, items)
        cache = cfg.teacher_cache or os.path.join(cfg.out_dir, "teacher")
        answers = teacher.teacher_answers(
            cfg.teacher or cfg.model,
            [*prompts, *extra],
            cache,
            cfg.max_answer_tokens,
            device=cfg.device,
        )
        examples = [Example(p.prompt_ids, answers[p.id]) for p in prompts if answers[p.id]]
        record["targets"] = "the teacher's greedy full-depth answers (cached in teacher/)"
        if items:
            kept, record["copy_prompts"] = copy_prompts.keep_correct_copies(
                tokenizer, items, extra, answers
            )
            examples += [Example(p.prompt_ids, answer) for p, answer in kept]
    else:
        examples = [Example(p.prompt_ids, p.reference_ids) for p in prompts]
        record["targets"] = "the data's own answers"
    return TrainingData(examples, record, {"description": chat.PROMPT_FORMAT})


def load_e2e_data(cfg, tokenizer) -> TrainingData:
    """E2E training rows by the run's split, with a share of them value-substituted."""
    rows = e2e.read_e2e_csv(cfg.data, cfg.max_rows)
    rows, _ = e2e_split.split_rows(rows, cfg.split_by, cfg.val_percent, cfg.name_val_percent)
    if not rows:
        raise ValueError(f"{cfg.data}: no training rows after the split")
    record = e2e.data_record(cfg.data, cfg.val_percent)
    record.update(e2e_split.split_record(cfg.split_by, cfg.val_percent, cfg.name_val_percent))
    if cfg.substitute > 0:
        rows = e2e_substitute.substitute_rows(rows, cfg.substitute, cfg.seed)
        record["substitute"] = {
            "fraction": cfg.substitute,
            "slots": list(e2e_substitute.SUBSTITUTED_SLOTS),
            "seed": cfg.seed,
        }
    return TrainingData(
        e2e.encode_rows(tokenizer, rows),
        record,
        {"description": e2e.PROMPT_FORMAT, "system_prompt": e2e.SYSTEM_PROMPT},
    )


def chat_split_prompts(
    cfg, tokenizer, side: str, max_model_len: int, limit: int | None = None
) -> tuple[list[chat.ChatPrompt], dict[str, Any]]:
    """The prompts of one side of the split, and the record of how they were chosen."""
    conversations, report = datasets.read_conversations(cfg.data)
    firsts = datasets.first_chunks(conversations)
    sides = datasets.split_conversations(firsts, cfg.val_percent, cfg.test_percent)
    prompts, num_left_out = chat.build_prompts(
        tokenizer,
        sides[side],
        cfg.max_prompt_tokens,
        cfg.max_answer_tokens,
        max_model_len,
        limit,
    )
    if not prompts:
        raise ValueError(f"{cfg.data}: no {side} prompts fit after the split and length filter")
    record = datasets.split_record(cfg.data, cfg.val_percent, cfg.test_percent)
    record.update(
        read=report.summary(),
        conversations={k: len(v) for k, v in sides.items()},
        first_chunks_only=True,
        side=side,
        num_prompts=len(prompts),
        num_left_out_by_length=num_left_out,
        max_prompt_tokens=cfg.max_prompt_tokens,
        max_answer_tokens=cfg.max_answer_tokens,
    )
    return prompts, record
