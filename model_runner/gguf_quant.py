"""GGUF blocks read as stored: Q4_0, Q4_1 and Q8_0 tensors as :class:`QuantizedWeight`.

Each of these GGUF types splits a row into blocks of 32 values with an fp16 scale ``d`` (and,
for Q4_1, an fp16 minimum ``m``):

- Q8_0: 32 int8 codes ``q``, value ``d * q``: group-wise int8 as it is.
- Q4_0: 16 bytes of 4-bit codes ``q``, value ``d * (q - 8)``: int4 with scale ``d``, zero 0.
- Q4_1: 16 bytes of 4-bit codes ``q``, value ``d * q + m``: int4 with scale ``d`` and zero
  ``m + 8 d`` (the value of code 8, the int4 kernel's zero point).

A 4-bit block's byte ``j`` holds value ``j`` in its low nibble and value ``j + 16`` in its high
nibble. The codes and scales go straight into the quantized linears' layout, never through a
float weight; other GGUF types are dequantized to float by the loader.
"""

from __future__ import annotations

import gguf
import numpy as np
import torch

from skipdecode.model_runner.quant import QuantizedWeight

BLOCK_SIZE = 32
BLOCK_TYPES = (
    gguf.GGMLQuantizationType.Q4_0,
    gguf.GGMLQuantizationType.Q4_1,
    gguf.GGMLQuantizationType.Q8_0,
)


def is_block_tensor(tensor: gguf.ReaderTensor) -> bool:
    """Whether ``tensor`` (a GGUFReader tensor) is a 2-D weight of a type read as stored."""
    return tensor.tensor_type in BLOCK_TYPES and len(tensor.shape) == 2


def read_blocks(tensor: gguf.ReaderTensor) -> QuantizedWeight:
    """``tensor`` (Q4_0, Q4_1 or Q8_0; GGUF shape reversed, so HF ``[N, K]``) as codes and
    float32 scales (and zeros) in groups of 32 columns."""
    qtype = tensor.tensor_type
    num_cols, num_rows = (int(dim) for dim in tensor.shape.tolist())
    num_groups = num_cols // BLOCK_SIZE
    blocks = np.asarray(tensor.data).reshape(num_rows, num_groups, -1)  # [N, G, bytes per block]
    scales = _fp16(blocks[..., 0:2])  # [N, G]
    if qtype == gguf.GGMLQuantizationType.Q8_0:
        codes = np.ascontiguousarray(blocks[..., 2:]).view(np.int8).reshape(num_rows, num_cols)
        return QuantizedWeight(torch.from_numpy(codes), torch.from_numpy(scales), None, BLOCK_SIZE)
    if qtype == gguf.GGMLQuantizationType.Q4_0:
        packed, zeros = blocks[..., 2:], np.zeros_like(scales)
    elif qtype == gguf.GGMLQuantizationType.Q4_1:
        packed, zeros = blocks[..., 4:], _fp16(blocks[..., 2:4]) + 8 * scales
    else:
        raise ValueError(f"GGUF tensor {tensor.name!r}: {qtype.name} is not read as stored")
    # [N, G, 16] bytes -> [N, G, 32] codes: the low nibbles are the block's first 16 values.
    codes = np.concatenate([packed & 0x0F, packed >> 4], axis=-1).reshape(num_rows, num_cols)
    return QuantizedWeight(
        torch.from_numpy(codes), torch.from_numpy(scales), torch.from_numpy(zeros), BLOCK_SIZE
    )


def _fp16(pairs: np.ndarray) -> np.ndarray:
    """[..., 2] bytes -> [...] float32 of the little-endian fp16 they hold."""
    return np.ascontiguousarray(pairs).view(np.float16)[..., 0].astype(np.float32)
