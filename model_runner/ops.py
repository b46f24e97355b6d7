"""Layer ops with two implementations: the fused CPU kernels when a step has them, else PyTorch.

``kernels`` is the compiled module from cpu_kernels.py (the runner passes it through the step's
context) or None: on GPU, in a dtype the kernels lack, when they could not be built, or when
``SKIPDECODE_CPU_KERNELS=0``. The PyTorch branch is the reference the kernels are tested against
(tests/engine/test_fused_ops.py); both round to the activation dtype at the same points.
"""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn


def rms_norm(x: torch.Tensor, norm: nn.Module, kernels: ModuleType | None) -> torch.Tensor:
    """``norm(x)`` for an RMSNorm module (``weight`` and ``eps``)."""
    if kernels is None:
        return norm(x)
    return kernels.rms_norm(x.contiguous(), norm.weight, norm.eps)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, norm: nn.Module, kernels: ModuleType | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(residual + x, norm(residual + x))``: a residual add and the next norm in one pass."""
    if kernels is None:
        total = residual + x
        return total, norm(total)
    total, normed = kernels.add_rms_norm(
        x.contiguous(), residual.contiguous(), norm.weight, norm.eps
    )
    return total, normed


def silu_and_mul(gate_up: torch.Tensor, kernels: ModuleType | None) -> torch.Tensor:
    """``silu(gate) * up`` where ``gate_up`` is ``[..., gate | up]`` (the fused projection)."""
    if kernels is None:
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up
    return kernels.silu_and_mul(gate_up.contiguous())


def rotary_store(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rotary: nn.Module, ctx
) -> torch.Tensor:
    """RoPE on ``query`` and ``key`` ([n, heads * head_dim] rows), keys and values stored at the
    layer's write slots, in one call of ``ctx.kernels``; returns the rotated queries
    [n, heads, head_dim].

    Kernels only: without them the caller runs ``rotary`` then ``store_kv`` (attention.py).
    """
    return ctx.kernels.rotary_store(
        query,
        key,
        value,
        ctx.plan.positions,
        rotary.cos,
        rotary.sin,
        ctx.key_cache,
        ctx.value_cache,
        ctx.write_slots,
    )
