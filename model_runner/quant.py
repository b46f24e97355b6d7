"""Weight-only quantized weights: integer codes with per-channel or group-wise scales.

A :class:`QuantizedWeight` is the one format every source produces (quantization of a float
weight at load, or GGUF blocks read as stored, gguf_quant.py) and every quantized linear
consumes (quant_linear.py). Two kinds:

- int8: ``codes`` int8 ``[N, K]``, value ``codes * scale``; a group spans ``K`` (one scale per
  output channel, PyTorch's ``_weight_int8pack_mm``) or 32 columns (GGUF Q8_0 blocks).
- int4: ``codes`` uint8 ``[N, K]`` in ``0..15``, value ``(codes - 8) * scale + zero`` per group
  of ``group_size`` columns (the convention of PyTorch's ``_weight_int4pack_mm_for_cpu``: the
  zero is the value of code 8).

Scales and zeros are ``[N, K / group_size]``. The kernels take them in the activation dtype, so
quantizing at load rounds them to the model dtype before choosing the codes; GGUF blocks bring
fp16 scales, held in float32 and cast when the linear is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

INT4_GROUP_SIZES = (32, 64, 128, 256)  # what _weight_int4pack_mm_for_cpu accepts
DEFAULT_GROUP_SIZE = 32
QUANT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # activation dtypes of the kernels


@dataclass
class QuantizedWeight:
    """A ``[N, K]`` weight as integer codes, scales and (int4) zeros; see the module docstring."""

    codes: torch.Tensor  # [N, K]: int8 (int8) or uint8 in 0..15 (int4)
    scales: torch.Tensor  # [N, K / group_size]
    zeros: torch.Tensor | None  # [N, K / group_size] for int4 (value of code 8); None for int8
    group_size: int  # columns per scale; K for one scale per output channel
    in_features: int | None = None  # K before padding to whole groups; None: K itself

    def __post_init__(self) -> None:
        num_rows, num_cols = self.codes.shape
        expected_dtype = torch.int8 if self.zeros is None else torch.uint8
        if self.codes.dtype != expected_dtype:
            kind = "int8" if self.zeros is None else "int4"
            raise ValueError(f"QuantizedWeight.codes of {kind} must be {expected_dtype}")
        if self.group_size < 1 or num_cols % self.group_size != 0:
            raise ValueError(
                f"QuantizedWeight.group_size {self.group_size} does not divide K = {num_cols}"
            )
        groups = (num_rows, num_cols // self.group_size)
        for name, tensor in (("scales", self.scales), ("zeros", self.zeros)):
            if tensor is not None and tuple(tensor.shape) != groups:
                raise ValueError(f"QuantizedWeight.{name} must be {groups}, got {tensor.shape}")

    @property
    def bits(self) -> int:
        return 8 if self.zeros is None else 4

    @property
    def shape(self) -> tuple[int, int]:
        """``(out_features, in_features)``: the weight's shape without K's padding."""
        return self.codes.shape[0], self.in_features or self.codes.shape[1]

    @property
    def is_per_channel(self) -> bool:
        return self.group_size == self.codes.shape[1]

    def dequantize(self) -> torch.Tensor:
        """The float32 ``[N, K]`` weight the codes stand for (without K's padding).

        Computed in float64 and rounded once, so a GGUF block's values come out as llama.cpp's
        (and ``gguf.quants.dequantize``'s) ``d * q + m``, to the bit."""
        codes = self.codes.to(torch.float64)
        scales = self.scales.to(torch.float64).repeat_interleave(self.group_size, dim=1)
        if self.zeros is None:
            values = codes * scales
        else:
            zeros = self.zeros.to(torch.float64).repeat_interleave(self.group_size, dim=1)
            values = (codes - 8) * scales + zeros
        return values[:, : self.shape[1]].to(torch.float32)

    def rows(self, transform: Callable[[torch.Tensor], torch.Tensor]) -> QuantizedWeight:
        """The same weight with ``transform`` (a permutation of rows) applied to every part."""
        zeros = None if self.zeros is None else transform(self.zeros)
        codes, scales = transform(self.codes), transform(self.scales)
        return QuantizedWeight(codes, scales, zeros, self.group_size, self.in_features)

    @staticmethod
    def can_cat(parts: list[QuantizedWeight]) -> bool:
        """Whether ``parts`` stack along N into one weight (same kind, K and grouping)."""
        first = parts[0]
        return all(
            p.bits == first.bits
            and p.codes.shape[1] == first.codes.shape[1]
            and p.shape[1] == first.shape[1]
            and p.group_size == first.group_size
            and p.scales.dtype == first.scales.dtype
            for p in parts
        )

    @staticmethod
    def cat(parts: list[QuantizedWeight]) -> QuantizedWeight:
        """Stack ``parts`` along N (a fused projection); check :meth:`can_cat` first."""
        zeros = None if parts[0].zeros is None else torch.cat([p.zeros for p in parts])
        return QuantizedWeight(
            torch.cat([p.codes for p in parts]),
            torch.cat([p.scales for p in parts]),
            zeros,
            parts[0].group_size,
            parts[0].in_features,
        )


def check_dtype(dtype: torch.dtype) -> None:
    """ValueError unless the weight-only kernels take activations of ``dtype``."""
    if dtype not in QUANT_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in QUANT_DTYPES)
        raise ValueError(f"quantization dtype must be one of {names} (got {dtype})")


def check_group_size(group_size: int) -> None:
    """ValueError naming ``quantization_group_size`` unless int4 supports it."""
    if group_size not in INT4_GROUP_SIZES:
        sizes = ", ".join(map(str, INT4_GROUP_SIZES))
        raise ValueError(f"quantization_group_size must be one of {sizes} (got {group_size!r})")


def quantize_int8(weight: torch.Tensor, dtype: torch.dtype) -> QuantizedWeight:
    """Symmetric int8 with one scale per output channel: ``scale = max|w| / 127``."""
    check_dtype(dtype)
    w = _float_weight(weight)
    # The scale is rounded to the compute dtype first, so the codes fit the scale the kernel uses.
    scales = (w.abs().amax(dim=1, keepdim=True) / 127).clamp_min(1e-12).to(dtype)  # [N, 1]
    codes = (w / scales.float()).round().clamp(-127, 127).to(torch.int8)
    return QuantizedWeight(codes, scales, None, w.shape[1])


def quantize_int4(weight: torch.Tensor, group_size: int, dtype: torch.dtype) -> QuantizedWeight:
    """Asymmetric int4 per group of ``group_size`` columns: the group's range [min, max] is
    split into 15 steps. K is padded with zero columns to a multiple of ``group_size``."""
    check_dtype(dtype)
    check_group_size(group_size)
    w = _float_weight(weight)
    num_rows, num_cols = w.shape
    padded_cols = -(-num_cols // group_size) * group_size
    w = torch.nn.functional.pad(w, (0, padded_cols - num_cols))
    groups = w.reshape(num_rows, -1, group_size)  # [N, G, group_size]
    low, high = groups.amin(dim=2), groups.amax(dim=2)  # [N, G]
    scales = ((high - low) / 15).clamp_min(1e-12).to(dtype)
    zeros = (low + 8 * scales.float()).to(dtype)  # the value of code 8
    # Codes against the rounded scales and zeros: the values the kernel will reconstruct.
    steps = (groups - zeros.float()[..., None]) / scales.float()[..., None]
    codes = (steps + 8).round().clamp(0, 15).to(torch.uint8).reshape(num_rows, padded_cols)
    return QuantizedWeight(codes, scales, zeros, group_size, num_cols)


def quantize_weight(
    weight: torch.Tensor, mode: str, group_size: int, dtype: torch.dtype
) -> QuantizedWeight:
    """``weight`` [N, K] quantized for ``mode`` ("int8" or "int4")."""
    if mode == "int8":
        return quantize_int8(weight, dtype)
    if mode == "int4":
        return quantize_int4(weight, group_size, dtype)
    raise ValueError(f"quantization must be int8 or int4 to quantize a weight (got {mode!r})")


def _float_weight(weight: torch.Tensor) -> torch.Tensor:
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(
            f"can only quantize a 2-D float weight (got {weight.dtype} {tuple(weight.shape)})"
        )
    return weight.detach().to(torch.float32)
