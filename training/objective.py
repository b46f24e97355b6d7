"""The training loss: next-token cross-entropy on target tokens, plus optional self-distillation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from skipdecode.scheduler import DepthSchedule
from skipdecode.training.batch import IGNORE_INDEX, Batch
from skipdecode.training.skip_forward import target_logits


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
    is_target = batch.labels != IGNORE_INDEX  # [B, T]
    student = target_logits(model, batch, schedule, is_target).float()  # [N, V] N target tokens
    ce = F.cross_entropy(student, batch.labels[is_target])
    kl = torch.zeros((), device=ce.device)
    if teacher is not None and kl_weight > 0:
        with torch.no_grad():
            full = DepthSchedule.full(schedule.num_layers)
            teacher_logp = F.log_softmax(
                target_logits(teacher, batch, full, is_target).float(), dim=-1
            )  # [N, V]
        # batchmean over the [N, V] rows: the per-token KL, averaged over target tokens.
        kl = F.kl_div(
            F.log_softmax(student, dim=-1), teacher_logp, log_target=True, reduction="batchmean"
        )
    loss = ce + kl_weight * kl
    return loss, LossParts(float(loss.detach()), float(ce.detach()), float(kl.detach()))
