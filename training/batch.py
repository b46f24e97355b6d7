"""Training examples (prompt ids + target ids) and their right-padded batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100  # label of positions that carry no loss (prompt, padding, last token)


@dataclass(frozen=True)
class Example:
    """One teacher-forcing sequence: the prompt runs at full depth, the target is generated."""

    prompt_ids: list[int]
    target_ids: list[int]  # the tokens the model should generate, EOS included

    def __post_init__(self) -> None:
        if not self.prompt_ids or not self.target_ids:
            raise ValueError("an Example needs a non-empty prompt and a non-empty target")

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.target_ids)


@dataclass
class Batch:
    """Right-padded sequences with next-token labels already shifted onto the predicting row."""

    input_ids: torch.Tensor  # [B, T] prompt + target, right-padded with pad_id
    attention_mask: torch.Tensor  # [B, T] 1 on real tokens, 0 on padding
    labels: torch.Tensor  # [B, T] labels[b, p] = token at p + 1 when it is a target, else -100
    prompt_lens: torch.Tensor  # [B] tokens of prompt; position prompt_len + g has generated index g

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens in the batch."""
        return int(self.attention_mask.sum())

    @property
    def num_target_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    def to(self, device: torch.device | str) -> Batch:
        """The same batch on ``device``."""
        return Batch(*(t.to(device) for t in vars(self).values()))


def collate(examples: Sequence[Example], pad_id: int) -> Batch:
    """Right-pad ``examples`` into one batch."""
    width = max(ex.num_tokens for ex in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, ex in enumerate(examples):
        tokens = ex.prompt_ids + ex.target_ids
        input_ids[row, : len(tokens)] = torch.tensor(tokens)
        attention_mask[row, : len(tokens)] = 1
        # Row p predicts token p + 1, so target token i is the label of row prompt_len + i - 1.
        start = len(ex.prompt_ids) - 1
        labels[row, start : start + len(ex.target_ids)] = torch.tensor(ex.target_ids)
    prompt_lens = torch.tensor([len(ex.prompt_ids) for ex in examples], dtype=torch.long)
    return Batch(input_ids, attention_mask, labels, prompt_lens)
