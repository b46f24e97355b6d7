"""The CPU kernels equal slow references and the PyTorch paths they replace (decode attention here,
the fused layer ops in test_fused_ops.py)."""

from __future__ import annotations

import pytest
import torch

from skipdecode import LLM, SamplingParams, SkipConfig
from skipdecode.model_runner.cpu_kernels import ENV_SWITCH, cpu_kernels


def reference(query, key_cache, value_cache, rows, tables, lengths, block_size, scale):
    """Per sequence and head, in float64: look each key position up in the block table."""
    num_heads, head_dim = query.shape[1:]
    group = num_heads // key_cache.shape[0]
    out = torch.zeros(len(rows), num_heads, head_dim, dtype=torch.float64)
    for s, (row, length) in enumerate(zip(rows.tolist(), lengths.tolist())):
        slots = [tables[s, p // block_size].item() * block_size + p % block_size
                 for p in range(length)]  # fmt: skip
        for h in range(num_heads):
            q = query[row, h].double()
            keys = key_cache[h // group, slots].double()  # [length, head_dim]
            values = value_cache[h // group, slots].double()
            probs = torch.softmax(keys @ q * scale, dim=0)
            out[s, h] = probs @ values
    return out.view(len(rows), -1)


def random_case(dtype, num_seqs=5, heads=6, kv_heads=2, head_dim=16, block_size=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    num_blocks = 40
    cache_shape = (kv_heads, num_blocks * block_size, head_dim)
    key_cache = torch.randn(cache_shape, generator=gen).to(dtype)
    value_cache = torch.randn(cache_shape, generator=gen).to(dtype)
    query = torch.randn(num_seqs + 3, heads, head_dim, generator=gen).to(dtype)
    rows = torch.randperm(num_seqs + 3, generator=gen)[:num_seqs]
    lengths = torch.tensor([1, 3, 4, 9, 17][:num_seqs])  # within, at and across block ends
    max_blocks = -(-int(lengths.max()) // block_size)
    tables = torch.stack([torch.randperm(num_blocks, generator=gen)[:max_blocks]
                          for _ in range(num_seqs)])  # fmt: skip
    return query, key_cache, value_cache, rows, tables, lengths, block_size, head_dim**-0.5


@pytest.fixture(scope="module")
def kernel(kernels):
    return kernels.decode_attention


# (heads, kv_heads, head_dim): any shape (runtime sizes), and shapes the kernel specialises at
# compile time (SmolLM2's 9/3 x 64, Llama-style 8/2 x 128, no grouping).
SHAPES = [(6, 2, 16), (9, 3, 64), (8, 2, 128), (4, 4, 64), (7, 1, 64)]


@pytest.mark.parametrize("heads, kv_heads, head_dim", SHAPES)
def test_kernel_equals_reference_in_fp32(kernel, heads, kv_heads, head_dim):
    case = random_case(torch.float32, heads=heads, kv_heads=kv_heads, head_dim=head_dim)
    got = kernel(*case)
    assert got.shape == (5, heads * head_dim) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), reference(*case), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("heads, kv_heads, head_dim", SHAPES[:2])
def test_kernel_in_bf16_is_within_rounding_of_the_reference(kernel, heads, kv_heads, head_dim):
    case = random_case(torch.bfloat16, heads=heads, kv_heads=kv_heads, head_dim=head_dim, seed=1)
    got = kernel(*case)
    assert got.dtype == torch.bfloat16
    # Inputs are the same bf16 values; the kernel accumulates in fp32 and rounds once at the end.
    torch.testing.assert_close(got.double(), reference(*case), rtol=1e-2, atol=1e-2)


def test_kernel_rejects_bad_input_with_a_clear_error(kernel):
    query, key_cache, value_cache, rows, tables, lengths, block_size, scale = random_case(
        torch.float32
    )
    with pytest.raises(RuntimeError, match="at least one key"):
        kernel(query, key_cache, value_cache, rows, tables, lengths * 0, block_size, scale)
    with pytest.raises(RuntimeError, match="dtypes differ"):
        kernel(query.double(), key_cache, value_cache, rows, tables, lengths, block_size, scale)
    with pytest.raises(RuntimeError, match="int64"):
        kernel(query, key_cache, value_cache, rows.int(), tables, lengths, block_size, scale)


def test_environment_switch_and_devices(kernel, monkeypatch):
    assert cpu_kernels(torch.device("cpu"), torch.float32) is not None
    assert cpu_kernels(torch.device("cpu"), torch.float16) is None
    assert cpu_kernels(torch.device("meta"), torch.float32) is None
    monkeypatch.setenv(ENV_SWITCH, "0")
    assert cpu_kernels(torch.device("cpu"), torch.float32) is None


@pytest.mark.parametrize("speedup", [1.0, 2.5])
def test_engine_logprobs_are_the_same_with_and_without_the_kernels(
    kernel, tiny_llama_dir, monkeypatch, speedup
):
    """Same greedy tokens and (fp32) logprobs from the kernels (decode attention, fused norms,
    RoPE + KV store) and the PyTorch ops, with skipping (decode groups at every depth) and
    prompts that prefill in several chunks."""
    prompts = [[5, 9, 2, 7, 1] * k for k in (1, 3, 7)]
    params = SamplingParams(max_tokens=12, temperature=0.0, logprobs=2, ignore_eos=True)
    skip = SkipConfig.for_speedup(speedup, decay_tokens=8, warmup_layers=1)

    def run(enabled: str):
        monkeypatch.setenv(ENV_SWITCH, enabled)
        llm = LLM(tiny_llama_dir, dtype="float32", max_num_batched_tokens=16, skip=skip)
        assert (llm.engine.runner.kernels is None) == (enabled == "0")
        return llm.generate(prompts, params)

    with_kernel, without = run("1"), run("0")
    for a, b in zip(with_kernel, without):
        assert a.token_ids == b.token_ids
        for la, lb in zip(a.logprobs, b.logprobs, strict=True):
            assert la.logprob == pytest.approx(lb.logprob, abs=1e-4)
            assert list(la.top) == list(lb.top)
