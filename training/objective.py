"""The training loss: next-token cross-entropy on target tokens, plus optional self-distillation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from skipdecode.scheduler import DepthSchedule
from skipdecode.training.batch import IGNORE_INDEX, Batch
from skipdecode.training.skip_forward import first_predicting_row, skip_forward


@dataclass(frozen=True)
class LossParts:
    """The pieces of one batch's loss, as plain floats for logging."""

    loss: float
    ce: float
    kl: float  # 0.0 without a teacher


def skip_aware_loss(
    model: nn.Module,
    batch: Batch,
    schedule: DepthSchedule,
    teacher: nn.Module | None = None,
    kl_weight: float = 0.0,
) -> tuple[torch.Tensor, LossParts]:
    """``CE + kl_weight * KL(teacher || student)``, both averaged over target tokens.

    The student runs ``schedule`` (skip-aware teacher forcing); the teacher, when given, runs at
    full depth under no_grad. Only rows that predict a target token reach the LM head.
    """
    from_row = first_predicting_row(batch)
    logits = skip_forward(model, batch, schedule, from_row)  # [B, T - from_row, V]
    labels = batch.labels[:, from_row:]
    is_target = labels != IGNORE_INDEX  # [B, T - from_row]
    student = logits[is_target].float()  # [N, V] N = target tokens in the batch
    ce = F.cross_entropy(student, labels[is_target])
    kl = torch.zeros((), device=ce.device)
    if teacher is not None and kl_weight > 0:
        with torch.no_grad():
            teacher_logits = teacher(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                logits_to_keep=batch.input_ids.shape[1] - from_row,
                use_cache=False,
            ).logits
            teacher_logp = F.log_softmax(teacher_logits[is_target].float(), dim=-1)  # [N, V]
        # batchmean over the [N, V] rows: the per-token KL, averaged over target tokens.
        kl = F.kl_div(
            F.log_softmax(student, dim=-1), teacher_logp, log_target=True, reduction="batchmean"
        )
    loss = ce + kl_weight * kl
    return loss, LossParts(float(loss.detach()), float(ce.detach()), float(kl.detach()))
