"""Read GGUF checkpoints as Hugging Face named float32 tensors.

GGUF (llama.cpp) differs from a Hugging Face checkpoint in three ways that this module undoes:
tensor names (`blk.N.attn_q.weight`), reversed shapes with optional block quantization, and, for
the llama architecture, a row permutation of q_proj/k_proj that llama.cpp applies for its
interleaved rotary layout.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import gguf
import numpy as np
import torch

from skipdecode.model_runner.gguf_quant import is_block_tensor, read_blocks
from skipdecode.model_runner.quant import QuantizedWeight

# Architectures whose tensors map onto LlamaForCausalLM-style names, and whether llama.cpp's
# converter permuted their q/k rows. Qwen2 uses NeoX-style rotary in llama.cpp, so its converter
# writes q/k unchanged (transformers' own GGUF loader only un-permutes for "llama" too).
SUPPORTED_ARCHITECTURES: dict[str, bool] = {"llama": True, "qwen2": False}

_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
# Precomputed tables, not weights: rope scaling factors and old per-layer rotary caches.
_SKIPPED_NAME = re.compile(
    r"(rope_freqs|rope_factors_long|rope_factors_short)\.weight|.*attn_rot_embd.*"
)
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_GLOBAL_TENSOR = re.compile(r"(\w+)\.(weight|bias)")


def open_gguf(path: str) -> gguf.GGUFReader:
    """Open `path` with gguf.GGUFReader, turning any parse failure into a ValueError naming it.

    GGUFReader raises assorted errors (ValueError, IndexError, KeyError, struct errors) for a
    file that is not GGUF or is truncated; callers only need to know the file is unusable.
    """
    try:
        return gguf.GGUFReader(path)
    except Exception as exc:
        raise ValueError(
            f"{path} is not a valid GGUF file (corrupt or truncated?): {type(exc).__name__}: {exc}"
        ) from exc


def read_metadata(reader: gguf.GGUFReader, key: str) -> Any:
    """Scalar metadata value for `key` (str, int, float or bool), or None if absent."""
    field = reader.fields.get(key)
    if field is None or not field.data:
        return None
    value = field.parts[field.data[0]]
    if field.types and field.types[0] == gguf.GGUFValueType.STRING:
        return bytes(value).decode("utf-8")
    return value.tolist()[0]


def gguf_to_hf_name(name: str) -> str | None:
    """Hugging Face parameter name for GGUF tensor `name`; None for tensors to skip.

    Raises ValueError for a name outside the llama-family layout.
    """
    if _SKIPPED_NAME.fullmatch(name):
        return None
    if match := _LAYER_TENSOR.fullmatch(name):
        layer, part, kind = match.groups()
        if part in _LAYER_NAMES:
            return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}"
    elif (match := _GLOBAL_TENSOR.fullmatch(name)) and match.group(1) in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[match.group(1)]}.{match.group(2)}"
    raise ValueError(f"unknown GGUF tensor name {name!r}: no Hugging Face llama-family equivalent")


def unpermute_rotary_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k permutation, giving the Hugging Face row order.

    Within each head, HF orders rows as [first half | second half] of the rotary pairs; llama.cpp
    interleaves them (row 2j+i holds HF row i*head_dim/2 + j). Works for weights and biases.
    """
    num_rows = weight.shape[0]
    if num_rows % (2 * num_heads) != 0:
        raise ValueError(f"cannot un-permute {num_rows} rows into {num_heads} heads")
    half_head_dim = num_rows // num_heads // 2
    # [num_heads, half_head_dim, 2, ...] -> [num_heads, 2, half_head_dim, ...] -> [rows, ...]
    pairs = weight.reshape(num_heads, half_head_dim, 2, *weight.shape[1:])
    return pairs.transpose(1, 2).reshape(weight.shape)


def _dequantize(path: str, tensor: Any) -> np.ndarray:
    """float32 array of `tensor` in HF shape (GGUF lists dims fastest-first, so reversed)."""
    qtype = tensor.tensor_type
    try:
        values = gguf.quants.dequantize(tensor.data, qtype)
    except NotImplementedError as exc:
        raise ValueError(
            f"tensor {tensor.name!r} in {path} has unsupported GGUF type {qtype.name}"
        ) from exc
    hf_shape = tuple(int(dim) for dim in reversed(tensor.shape.tolist()))
    values = np.asarray(values, dtype=np.float32).reshape(hf_shape)
    # F32 tensors come back as a read-only view of the memory map; torch needs its own copy.
    return values if values.flags.writeable else values.copy()


def _head_counts(path: str, reader: gguf.GGUFReader, arch: str) -> tuple[int, int]:
    """(num_attention_heads, num_key_value_heads) from the metadata; kv defaults to heads."""
    num_heads = read_metadata(reader, f"{arch}.attention.head_count")
    if not isinstance(num_heads, int):
        raise ValueError(f"{path}: GGUF metadata lacks {arch}.attention.head_count")
    num_kv_heads = read_metadata(reader, f"{arch}.attention.head_count_kv")
    return num_heads, num_kv_heads if isinstance(num_kv_heads, int) else num_heads


def iter_gguf_weights(
    path: str, keep_blocks: bool = False
) -> Iterator[tuple[str, torch.Tensor | QuantizedWeight]]:
    """(hf_name, float32 tensor) for every weight in the GGUF file at `path`.

    The file and its architecture are checked now; tensors are dequantized one at a time during
    iteration, so peak memory stays near one tensor plus the memory-mapped file. With
    `keep_blocks`, 2-D Q4_0/Q4_1/Q8_0 tensors come as a QuantizedWeight of their blocks instead
    (gguf_quant.py), not dequantized.
    """
    reader = open_gguf(path)
    arch = read_metadata(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(SUPPORTED_ARCHITECTURES)
        raise ValueError(f"{path}: unsupported GGUF architecture {arch!r} (supported: {supported})")
    num_heads, num_kv_heads = _head_counts(path, reader, arch)
    is_permuted = SUPPORTED_ARCHITECTURES[arch]
    return _read_tensors(path, reader, is_permuted, num_heads, num_kv_heads, keep_blocks)


def _read_tensors(
    path: str,
    reader: gguf.GGUFReader,
    is_permuted: bool,
    num_heads: int,
    num_kv_heads: int,
    keep_blocks: bool,
) -> Iterator[tuple[str, torch.Tensor | QuantizedWeight]]:
    """Yield the mapped, dequantized (or block) and (if `is_permuted`) un-permuted tensors."""
    for tensor in reader.tensors:
        hf_name = gguf_to_hf_name(tensor.name)
        if hf_name is None:
            continue
        if keep_blocks and is_block_tensor(tensor):
            weight = read_blocks(tensor)
        else:
            weight = torch.from_numpy(_dequantize(path, tensor))
        heads = None
        if is_permuted and ".self_attn.q_proj." in hf_name:
            heads = num_heads
        elif is_permuted and ".self_attn.k_proj." in hf_name:
            heads = num_kv_heads
        if heads is not None and isinstance(weight, QuantizedWeight):
            weight = weight.rows(lambda t, heads=heads: unpermute_rotary_rows(t, heads))
        elif heads is not None:
            weight = unpermute_rotary_rows(weight, heads)
        yield hf_name, weight
