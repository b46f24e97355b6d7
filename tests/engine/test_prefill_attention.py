"""Prefill attention through scaled_dot_product_attention against a per-head loop reference."""

from __future__ import annotations

import math

import pytest
import torch

from skipdecode.model_runner.attention import grouped_attention, prefill_attention


def reference(queries, keys, values, mask, scale):
    """softmax(q k^T * scale, masked) v, one sequence and one head at a time."""
    num_seqs, num_q, num_heads, head_dim = queries.shape
    group = num_heads // keys.shape[0]
    out = torch.zeros_like(queries)
    for s in range(num_seqs):
        for h in range(num_heads):
            q, k, v = queries[s, :, h], keys[h // group, s], values[h // group, s]
            scores = (q @ k.T) * scale
            scores = scores.masked_fill(~mask[s, 0], float("-inf"))
            out[s, :, h] = torch.softmax(scores, dim=-1) @ v
    return out


def step_mask(num_seqs: int, num_q: int, num_kv: int, generator) -> torch.Tensor:
    """Causal chunks at random offsets, with padded query rows that see only key 0 (as the
    step context builds them)."""
    mask = torch.zeros(num_seqs, 1, num_q, num_kv, dtype=torch.bool)
    for s in range(num_seqs):
        length = int(torch.randint(1, num_q + 1, (1,), generator=generator))
        start = int(torch.randint(0, num_kv - num_q + 1, (1,), generator=generator))
        for i in range(num_q):
            if i < length:
                mask[s, 0, i, : start + i + 1] = True
            else:
                mask[s, 0, i, 0] = True
    return mask


@pytest.mark.parametrize(
    ("num_heads", "num_kv_heads", "num_q", "num_kv"),
    [(9, 3, 7, 32), (4, 4, 16, 16), (6, 2, 33, 80)],
)
def test_prefill_attention_equals_the_reference(num_heads, num_kv_heads, num_q, num_kv):
    generator = torch.Generator().manual_seed(num_q)
    num_seqs, head_dim = 3, 16
    queries = torch.randn(num_seqs, num_q, num_heads, head_dim, generator=generator)
    keys = torch.randn(num_kv_heads, num_seqs, num_kv, head_dim, generator=generator)
    values = torch.randn(num_kv_heads, num_seqs, num_kv, head_dim, generator=generator)
    mask = step_mask(num_seqs, num_q, num_kv, generator)
    scale = 1 / math.sqrt(head_dim)
    expected = reference(queries, keys, values, mask, scale)
    got = prefill_attention(queries, keys, values, mask, scale)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # The batched-matmul path (single-query decodes without the CPU kernel) agrees too.
    torch.testing.assert_close(
        grouped_attention(queries, keys, values, mask, scale), expected, atol=1e-5, rtol=1e-5
    )
