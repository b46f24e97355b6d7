"""CPU transform: pre-reorder Linear weights for oneDNN, applied to the built module tree.

On CPU in bf16, oneDNN's linear with a weight reordered once at load runs 1.3-2x faster than
``F.linear`` on the plain weight (measured on this project's 2-core AVX512-BF16 machine, batch 1
to 64, SmolLM2 shapes), with bit-identical outputs. The models stay plain: this swaps modules
from outside, like quantization would.
"""

from __future__ import annotations

import torch
from torch import nn

from skipdecode.model_runner.quant import QuantizedWeight


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` that multiplies with a oneDNN-reordered copy of its weight."""

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> PackedLinear:
        packed = cls.__new__(cls)
        nn.Module.__init__(packed)
        packed.in_features, packed.out_features = linear.in_features, linear.out_features
        packed.weight = linear.weight  # kept: tied embeddings and shape queries still use it
        packed.bias = linear.bias
        reordered = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        packed.register_buffer("packed_weight", reordered, persistent=False)
        return packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # oneDNN wants 2-D input
        out = torch.ops.mkldnn._linear_pointwise(
            flat, self.packed_weight, self.bias, "none", [], ""
        )
        return out.view(*x.shape[:-1], self.out_features)


def can_pack(model: nn.Module) -> bool:
    """Packing applies to bf16 weights on CPU when this torch build has oneDNN's linear and the
    processor has oneDNN's bf16 path (AVX-512 BW/VL/DQ or AVX-NE-CONVERT); on other CPUs
    (AVX2 only) the reorder is refused and the plain matmul is used."""
    param = next(model.parameters())
    return (
        param.device.type == "cpu"
        and param.dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    )


# (fused attribute, the projections it replaces): modules that declare the fused attribute
# (initially None) run one matmul over the concatenated weights and split its output.
FUSIONS = (("qkv_proj", ("q_proj", "k_proj", "v_proj")), ("gate_up_proj", ("gate_proj", "up_proj")))


def fuse_projections(model: nn.Module, stored: dict[str, QuantizedWeight] | None = None) -> int:
    """Concatenate projections that read the same input into one ``nn.Linear`` each.

    Fewer, wider matmuls: at decode batch sizes each linear call has a fixed cost (dispatch,
    oneDNN primitive, a parallel region) that is a large part of its time. Returns how many
    fused linears were made; the originals are removed.

    ``stored`` (see quant_linear.quantize_model) holds weights kept quantized, by name: parts
    stored alike are fused by stacking their codes (the fused linear's float weight is left
    unset, as theirs was); a mix of stored and float parts is left unfused.
    """
    stored = {} if stored is None else stored
    count = 0
    for path, module in list(model.named_modules()):
        prefix = f"{path}." if path else ""
        for fused_name, part_names in FUSIONS:
            parts = [getattr(module, name, None) for name in part_names]
            if getattr(module, fused_name, False) is not None or not all(
                type(p) is nn.Linear for p in parts
            ):
                continue
            has_bias = {p.bias is not None for p in parts}
            if len(has_bias) > 1 or len({p.in_features for p in parts}) > 1:
                continue
            part_keys = [f"{prefix}{name}.weight" for name in part_names]
            quantized = [stored[key] for key in part_keys if key in stored]
            if quantized and not (
                len(quantized) == len(parts) and QuantizedWeight.can_cat(quantized)
            ):
                continue
            weight = torch.cat([p.weight.detach() for p in parts])
            fused = nn.Linear(parts[0].in_features, weight.shape[0], bias=has_bias.pop())
            fused = fused.to(device=weight.device, dtype=weight.dtype)
            fused.weight = nn.Parameter(weight, requires_grad=False)
            if fused.bias is not None:
                fused.bias = nn.Parameter(torch.cat([p.bias.detach() for p in parts]), False)
            setattr(module, fused_name, fused)
            for name, key in zip(part_names, part_keys):
                delattr(module, name)
                stored.pop(key, None)
            if quantized:
                stored[f"{prefix}{fused_name}.weight"] = QuantizedWeight.cat(quantized)
            count += 1
    return count


def pack_linears(model: nn.Module) -> int:
    """Replace every ``nn.Linear`` in ``model`` by a ``PackedLinear``; returns how many."""
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    for parent, name, child in targets:
        setattr(parent, name, PackedLinear.from_linear(child))
    return len(targets)
