"""Quantized linears on PyTorch's CPU weight-only kernels, and the transform that installs them.

Applied from outside, like the CPU packing: :func:`quantize_model` swaps the ``nn.Linear``
modules of a loaded model (fused projections and the LM head included) for
:class:`Int8Linear` or :class:`Int4Linear`. Activations stay float (the model dtype); each
kernel reads integer codes and multiplies with scales in the activation dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from skipdecode.model_runner.quant import QuantizedWeight, check_dtype, quantize_weight

_INT4_ROW_MULTIPLE = 16  # _convert_weight_to_int4pack_for_cpu wants N divisible by 16
_INT8_COL_MULTIPLE = 16  # _weight_int8pack_mm's AVX-512 bf16 path reads K 16 at a time


class Int8Linear(nn.Module):
    """``x @ (codes * scales).T + bias`` with ``_weight_int8pack_mm``: int8 codes, one scale
    per output channel.

    The kernel's vectorized (bf16) path reads the input 8 or 16 columns at a time with aligned
    loads, so K is padded with zero columns to a multiple of 16 and the input is passed
    contiguous and 64-byte aligned.
    """

    def __init__(self, qweight: QuantizedWeight, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        check_dtype(dtype)
        if qweight.bits != 8 or not qweight.is_per_channel:
            raise ValueError("Int8Linear takes int8 codes with one scale per output channel")
        self.out_features, self.in_features = qweight.shape
        self.num_padded_cols = -self.in_features % _INT8_COL_MULTIPLE
        codes = F.pad(qweight.codes[:, : self.in_features], (0, self.num_padded_cols))
        self.register_buffer("codes", codes.contiguous())  # [N, K'] int8
        self.register_buffer("scales", qweight.scales.reshape(-1).to(dtype))  # [N]
        self.bias = _bias(bias, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = _kernel_input(x, self.in_features, self.num_padded_cols)
        out = torch.ops.aten._weight_int8pack_mm(flat, self.codes, self.scales)
        if self.bias is not None:
            out += self.bias
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, per-channel"


class Int4Linear(nn.Module):
    """``x @ W.T + bias`` with ``_weight_int4pack_mm_for_cpu``: 4-bit codes in groups along K,
    each group with a scale and a zero (``W = (code - 8) * scale + zero``).

    Shapes the kernel refuses are padded: N up to a multiple of 16 (rows cut from the output),
    K up to whole groups (zero columns, and the input padded to match). ``num_input_copies=2``
    serves int8 codes split into two 4-bit halves (:meth:`from_int8_groups`).
    """

    def __init__(
        self,
        qweight: QuantizedWeight,
        bias: torch.Tensor | None,
        dtype: torch.dtype,
        num_input_copies: int = 1,
    ):
        super().__init__()
        check_dtype(dtype)
        if qweight.bits != 4:
            raise ValueError("Int4Linear takes int4 codes (uint8 in 0..15)")
        num_rows, num_cols = qweight.codes.shape
        self.out_features = num_rows
        self.in_features = qweight.shape[1] // num_input_copies
        self.num_input_copies = num_input_copies
        self.num_padded_cols = num_cols - self.in_features * num_input_copies
        self.group_size = qweight.group_size
        pad_rows = -num_rows % _INT4_ROW_MULTIPLE
        codes = F.pad(qweight.codes.to(torch.int32), (0, 0, 0, pad_rows))  # [N', K'] in 0..15
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
        self.register_buffer("packed", packed)  # [N', K' / 2] uint8
        # [G, N', 2]: the kernel's layout of (scale, zero) per group and output channel.
        scales_and_zeros = torch.stack([qweight.scales, qweight.zeros], dim=-1).transpose(0, 1)
        scales_and_zeros = F.pad(scales_and_zeros.to(dtype), (0, 0, 0, pad_rows))
        self.register_buffer("scales_and_zeros", scales_and_zeros.contiguous())
        self.bias = _bias(bias, dtype)

    @classmethod
    def from_int8_groups(
        cls, qweight: QuantizedWeight, bias: torch.Tensor | None, dtype: torch.dtype
    ) -> Int4Linear:
        """Group-wise int8 (GGUF Q8_0) on the int4 kernel, exactly: ``q = 16 * hi + lo`` with
        ``hi = q >> 4`` in -8..7 and ``lo = q & 15`` in 0..15, so ``x @ (s q).T`` is
        ``[x, x] @ [16 s hi | s lo].T``. In the kernel's terms the high half has code
        ``hi + 8``, scale ``16 s`` and zero 0; the low half code ``lo``, scale ``s`` and zero
        ``8 s``. Same bytes as int8 codes, twice the multiply-adds."""
        if qweight.bits != 8 or qweight.is_per_channel:
            raise ValueError("from_int8_groups takes int8 codes with group-wise scales")
        codes = qweight.codes.to(torch.int16)
        high, low = (codes >> 4) + 8, codes & 15  # [N, K] each, in 0..15
        scales = qweight.scales.to(torch.float32)
        halves = QuantizedWeight(
            codes=torch.cat([high, low], dim=1).to(torch.uint8),  # [N, 2K]
            scales=torch.cat([16 * scales, scales], dim=1),
            zeros=torch.cat([torch.zeros_like(scales), 8 * scales], dim=1),
            group_size=qweight.group_size,
        )
        return cls(halves, bias, dtype, num_input_copies=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # [M, K]
        if self.num_input_copies > 1:
            flat = torch.cat([flat] * self.num_input_copies, dim=1)
        flat = _kernel_input(flat, flat.shape[1], self.num_padded_cols)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(
            flat, self.packed, self.group_size, self.scales_and_zeros
        )
        if out.shape[1] != self.out_features:
            out = out[:, : self.out_features].contiguous()
        if self.bias is not None:
            out += self.bias
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features},"
            f" group_size={self.group_size}, num_input_copies={self.num_input_copies}"
        )


def quantized_linear(
    qweight: QuantizedWeight, bias: torch.Tensor | None, dtype: torch.dtype
) -> nn.Module:
    """The module that multiplies with ``qweight``: int4, per-channel int8 or grouped int8."""
    if qweight.bits == 4:
        return Int4Linear(qweight, bias, dtype)
    if qweight.is_per_channel:
        return Int8Linear(qweight, bias, dtype)
    return Int4Linear.from_int8_groups(qweight, bias, dtype)


HEAD_NAMES = ("lm_head",)  # the output projection of the supported architectures


def layer_mode(path: str, mode: str) -> str:
    """How the linear at ``path`` is quantized under ``mode``: the LM head keeps 8 bits under
    int4. Its error lands directly on every logit (at 4 bits it costs the default model's text
    four times what 4-bit decoder layers do; docs/quality.md), and llama.cpp's 4-bit K-quants
    likewise keep their output tensor at 6 bits."""
    if mode == "int4" and path.rsplit(".", 1)[-1] in HEAD_NAMES:
        return "int8"
    return mode


def quantize_model(
    model: nn.Module,
    mode: str,
    group_size: int,
    stored: dict[str, QuantizedWeight] | None = None,
) -> int:
    """Replace the model's ``nn.Linear`` modules by quantized ones; returns how many.

    ``stored`` maps a linear's weight name (``model.layers.0.mlp.down_proj.weight``) to a weight
    the checkpoint holds quantized already (GGUF blocks), used as it is. ``mode`` "int8" or
    "int4" quantizes every other linear from its float weight; "gguf" leaves them float. The
    LM head, tied to the embedding, gets its own quantized copy and the embedding lookup stays
    float; under "int4" the head is quantized as int8 (``head_mode``).
    """
    stored = stored or {}
    dtype = next(model.parameters()).dtype
    targets = [
        (f"{path}.{name}" if path else name, parent, name, child)
        for path, parent in model.named_modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    count = 0
    for path, parent, name, linear in targets:
        qweight = stored.get(f"{path}.weight")
        if qweight is None and mode == "gguf":
            continue  # a float tensor in the file stays float
        if qweight is None:
            qweight = quantize_weight(linear.weight, layer_mode(path, mode), group_size, dtype)
        elif qweight.shape != tuple(linear.weight.shape):
            raise ValueError(f"{path}: stored {qweight.shape}, model {tuple(linear.weight.shape)}")
        setattr(parent, name, quantized_linear(qweight, linear.bias, dtype))
        count += 1
    return count


def _kernel_input(x: torch.Tensor, in_features: int, num_padded_cols: int) -> torch.Tensor:
    """``x`` as the kernels read it: 2-D ``[M, K + num_padded_cols]``, contiguous (they take the
    row stride to be K) and 64-byte aligned (their vector loads may be aligned ones)."""
    flat = x.reshape(-1, in_features)
    if num_padded_cols:
        return F.pad(flat, (0, num_padded_cols))  # a fresh tensor
    flat = flat.contiguous()
    if flat.data_ptr() % 64:
        flat = flat.clone()
    return flat


def _bias(bias: torch.Tensor | None, dtype: torch.dtype) -> nn.Parameter | None:
    if bias is None:
        return None
    return nn.Parameter(bias.detach().to(dtype), requires_grad=False)
