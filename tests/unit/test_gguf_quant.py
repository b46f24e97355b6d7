"""GGUF Q4_0/Q4_1/Q8_0 blocks read as stored equal gguf's own dequantization, on the default
model's real tensors (marked slow) and on blocks gguf quantizes here; the quantized linears
built from them multiply with exactly those values."""

from __future__ import annotations

from types import SimpleNamespace

import gguf
import numpy as np
import pytest
import torch

from skipdecode.model_runner.gguf_quant import is_block_tensor, read_blocks
from skipdecode.model_runner.quant_linear import Int4Linear, quantized_linear
from skipdecode.model_runner.weights import default_model_path, iter_weights

Q = gguf.GGMLQuantizationType
# Q8_0 (the embedding, which is also the tied LM head) and Q4_1 of every kind of projection.
SAMPLED = (
    "token_embd.weight",
    "blk.0.attn_q.weight",
    "blk.0.attn_k.weight",
    "blk.0.ffn_down.weight",
    "blk.13.ffn_gate.weight",
    "blk.29.attn_output.weight",
)


@pytest.fixture(scope="module")
def tensors():
    reader = gguf.GGUFReader(default_model_path())
    return {t.name: t for t in reader.tensors if t.name in SAMPLED}


def gguf_values(tensor) -> torch.Tensor:
    """gguf's own dequantization, reshaped to the HF [N, K] (GGUF lists dims reversed)."""
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    num_cols, num_rows = (int(d) for d in tensor.shape.tolist())
    return torch.from_numpy(np.asarray(values, dtype=np.float32).reshape(num_rows, num_cols))


@pytest.mark.slow
def test_the_sample_covers_q8_0_and_q4_1(tensors):
    assert set(tensors) == set(SAMPLED)
    assert tensors["token_embd.weight"].tensor_type == Q.Q8_0
    assert {t.tensor_type for name, t in tensors.items() if name.startswith("blk.")} == {Q.Q4_1}
    assert all(is_block_tensor(t) for t in tensors.values())


@pytest.mark.slow
@pytest.mark.parametrize("name", SAMPLED)
def test_default_model_blocks_equal_gguf_dequantize(tensors, name):
    expected = gguf_values(tensors[name])
    qweight = read_blocks(tensors[name])
    assert qweight.group_size == 32 and qweight.bits == (8 if "token_embd" in name else 4)
    assert torch.equal(qweight.dequantize(), expected)
    # The kernel's values: an identity input reads back every weight the linear multiplies with
    # (the first 2048 rows: the scalar fp32 kernel is slow on the 49152-row embedding).
    rows = qweight.rows(lambda t: t[:2048])
    module = quantized_linear(rows, None, torch.float32)
    assert isinstance(module, Int4Linear)  # Q8_0 too, as two 4-bit halves
    read_back = module(torch.eye(expected.shape[1])).T
    torch.testing.assert_close(read_back, expected[:2048], rtol=0, atol=0)


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q8_0])
def test_blocks_gguf_quantizes_here_read_back_exactly(qtype):
    # Odd row count, several blocks per row, values of mixed size: every branch of the layout.
    generator = np.random.default_rng(0)
    values = generator.standard_normal((7, 96)) * [[0.01], [1], [30], [1], [2], [0.1], [5]]
    blocks = gguf.quants.quantize(values.astype(np.float32), qtype)  # [7, bytes per row]
    tensor = SimpleNamespace(name="t", tensor_type=qtype, shape=np.array([96, 7]), data=blocks)
    expected = gguf_values(tensor)
    qweight = read_blocks(tensor)
    assert torch.equal(qweight.dequantize(), expected)
    module = quantized_linear(qweight, None, torch.float32)
    torch.testing.assert_close(module(torch.eye(96)).T, expected, rtol=0, atol=0)


@pytest.mark.slow
def test_the_block_stream_restores_the_hf_row_order():
    # q_proj and k_proj rows are un-permuted (llama.cpp's rotary layout) on codes and scales
    # alike: the blocks read as stored dequantize to the float stream's tensors.
    wanted = {f"model.layers.0.self_attn.{p}_proj.weight" for p in "qkv"}
    wanted.add("model.embed_tokens.weight")
    path = default_model_path()
    blocks = _first(iter_weights(path, keep_blocks=True), wanted)
    floats = _first(iter_weights(path), wanted)
    for name in wanted:
        assert torch.equal(blocks[name].dequantize(), floats[name]), name


def _first(stream, names: set[str]) -> dict:
    found = {}
    for name, tensor in stream:
        if name in names:
            found[name] = tensor
            if len(found) == len(names):
                break
    return found
