"""The fused CPU layer ops equal the PyTorch ops they replace (model_runner/ops.py, llama.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from skipdecode.model_runner import ops
from skipdecode.model_runner.attention import store_kv
from skipdecode.model_runner.models.llama import RMSNorm
from skipdecode.model_runner.models.rotary import RotaryEmbedding

HIDDEN, HEADS, KV_HEADS, HEAD_DIM = 48, 6, 2, 8


def make_norm(dtype) -> RMSNorm:
    norm = RMSNorm(HIDDEN, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, HIDDEN))
    return norm.to(dtype)


def randn(*shape, dtype, seed=0, scale=1.0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)


# In bf16 both paths round at the same points; the fp32 sums inside may be ordered differently,
# which moves a result by at most one bf16 step (2^-8 relative) now and then.
BF16_TOLERANCE = {"rtol": 2**-7, "atol": 1e-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_the_module(kernels, dtype):
    norm, x = make_norm(dtype), randn(5, HIDDEN, dtype=dtype, scale=3.0)
    got, want = ops.rms_norm(x, norm, kernels), norm(x)
    assert got.dtype == dtype and got.shape == x.shape
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else BF16_TOLERANCE
    torch.testing.assert_close(got, want, **tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_rms_norm_returns_the_sum_and_its_norm(kernels, dtype):
    norm = make_norm(dtype)
    x, residual = randn(7, HIDDEN, dtype=dtype, seed=1), randn(7, HIDDEN, dtype=dtype, seed=2)
    kept = residual.clone()
    total, normed = ops.add_rms_norm(x, residual, norm, kernels)
    assert torch.equal(total, residual + x)  # one rounded add: exactly PyTorch's
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else BF16_TOLERANCE
    torch.testing.assert_close(normed, norm(residual + x), **tolerance)
    assert torch.equal(residual, kept)  # inputs are not modified


def test_rms_norm_of_a_prefill_sized_batch_uses_every_row(kernels):
    """Enough rows to split across threads: each row is still normalised on its own."""
    norm = make_norm(torch.float32)
    x = randn(3000, HIDDEN, dtype=torch.float32, seed=3) * torch.arange(1, 3001.0)[:, None]
    torch.testing.assert_close(ops.rms_norm(x, norm, kernels), norm(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_and_mul_matches_pytorch(kernels, dtype):
    gate_up = randn(9, 2 * 40, dtype=dtype, seed=4, scale=4.0)
    gate, up = gate_up.chunk(2, dim=-1)
    got = ops.silu_and_mul(gate_up, kernels)
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else BF16_TOLERANCE
    torch.testing.assert_close(got, F.silu(gate) * up, **tolerance)
    assert torch.equal(ops.silu_and_mul(gate_up, None), F.silu(gate) * up)


def rotary_case(kernels, dtype, rows=5, num_slots=40, seed=5):
    config = SimpleNamespace(
        hidden_size=HEADS * HEAD_DIM,
        num_attention_heads=HEADS,
        rope_theta=10000.0,
        max_position_embeddings=64,
    )
    rotary = RotaryEmbedding(config)
    rotary.rebuild(config, torch.device("cpu"), dtype)
    qkv = randn(rows, (HEADS + 2 * KV_HEADS) * HEAD_DIM, dtype=dtype, seed=seed)
    q, k, v = qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
    cache_shape = (KV_HEADS, num_slots, HEAD_DIM)
    ctx = SimpleNamespace(
        plan=SimpleNamespace(positions=torch.tensor([0, 3, 17, 63, 8][:rows])),
        write_slots=torch.tensor([4, 9, 31, 0, 22][:rows]),
        key_cache=torch.full(cache_shape, 7.0, dtype=dtype),
        value_cache=torch.full(cache_shape, 7.0, dtype=dtype),
        kernels=kernels,
    )
    return q, k, v, rotary, ctx


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_store_matches_rotary_then_index_copy(kernels, dtype):
    q, k, v, rotary, ctx = rotary_case(kernels, dtype)
    want_ctx = SimpleNamespace(**vars(ctx))
    want_ctx.key_cache, want_ctx.value_cache = ctx.key_cache.clone(), ctx.value_cache.clone()
    shape = lambda t, h: t.reshape(len(t), h, HEAD_DIM)  # noqa: E731
    want_q, want_k = rotary(ctx.plan.positions, shape(q, HEADS), shape(k, KV_HEADS))
    store_kv(want_k, shape(v, KV_HEADS), want_ctx)

    got_q = ops.rotary_store(q, k, v, rotary, ctx)
    assert got_q.shape == (5, HEADS, HEAD_DIM) and got_q.is_contiguous()
    # Each output element is the same two rounded products and one rounded sum in both paths.
    torch.testing.assert_close(got_q, want_q, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ctx.key_cache, want_ctx.key_cache, rtol=1e-6, atol=1e-6)
    assert torch.equal(ctx.value_cache, want_ctx.value_cache)
    untouched = torch.ones(ctx.key_cache.shape[1], dtype=torch.bool)
    untouched[ctx.write_slots] = False
    assert (ctx.key_cache[:, untouched] == 7.0).all()


def test_rotary_store_rejects_out_of_range_positions_and_slots(kernels):
    q, k, v, rotary, ctx = rotary_case(kernels, torch.float32)
    ctx.plan.positions = torch.tensor([0, 3, 17, 64, 8])  # the table has 64 positions
    with pytest.raises(RuntimeError, match="out of range"):
        ops.rotary_store(q, k, v, rotary, ctx)
    q, k, v, rotary, ctx = rotary_case(kernels, torch.float32)
    ctx.write_slots = torch.tensor([4, 9, -1, 0, 22])
    with pytest.raises(RuntimeError, match="out of range"):
        ops.rotary_store(q, k, v, rotary, ctx)


def test_fused_ops_reject_bad_input_with_a_clear_error(kernels):
    norm = make_norm(torch.float32)
    with pytest.raises(RuntimeError, match="dtypes differ"):
        kernels.rms_norm(torch.ones(2, HIDDEN, dtype=torch.bfloat16), norm.weight, 1e-5)
    with pytest.raises(RuntimeError, match="last dimension"):
        kernels.rms_norm(torch.ones(2, HIDDEN + 1), norm.weight, 1e-5)
    with pytest.raises(RuntimeError, match="residual"):
        kernels.add_rms_norm(torch.ones(2, HIDDEN), torch.ones(3, HIDDEN), norm.weight, 1e-5)
    with pytest.raises(RuntimeError, match="even"):
        kernels.silu_and_mul(torch.ones(2, 5))
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        kernels.silu_and_mul(torch.ones(2, 4, dtype=torch.float64))
    q, k, v, rotary, ctx = rotary_case(kernels, torch.float32)
    with pytest.raises(RuntimeError, match="one dtype"):
        ops.rotary_store(q, k.bfloat16(), v, rotary, ctx)
