"""LoRA that applies only where a token skips: the training side of ``apply_to: "skipping"``.

A gated adapter leaves every full-depth position (prompt tokens, generated tokens at depth L)
on the base weights, so the model at 1x is the base model exactly; positions that bypass layers
get ``base(x) + scale * B(A(x))`` in every adapted linear. The engine does the same per row
(model_runner/gated_adapter.py).

Here the gate is a forward hook on each PEFT ``lora_B`` linear that multiplies its output by a
per-position mask. :func:`skip_forward.skipping` sets the mask from the layer plan of the batch
(a position is full depth when it runs every layer); outside that block the mask is unset and
the adapters add nothing, so a gated model run without a schedule is the base model.
"""

from __future__ import annotations

import torch
from torch import nn

APPLY_TO = ("all", "skipping")


class LoraGate:
    """The positions whose LoRA update applies: a [B, T] bool mask, or None (none do)."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None

    def hook(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return output * 0
        return output * self.mask.to(device=output.device, dtype=output.dtype)[..., None]


def gate_lora(model: nn.Module) -> LoraGate:
    """Gate every LoRA update of the PEFT ``model``; returns the gate (also ``model.lora_gate``)."""
    gate = LoraGate()
    found = 0
    for name, module in model.named_modules():
        if name.endswith(".lora_B.default") and isinstance(module, nn.Linear):
            module.register_forward_hook(gate.hook)
            found += 1
    if not found:
        raise ValueError("gate_lora: the model has no LoRA adapters to gate")
    model.lora_gate = gate
    return gate


def lora_gate(model: nn.Module) -> LoraGate | None:
    """The gate of a gated LoRA model, else None."""
    return getattr(model, "lora_gate", None)
