"""Paged attention over the skip-aware KV pool, and the layer loop that applies the skip plan."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from skipdecode.model_runner.context import LayerContext, StepContext


def paged_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    ctx: LayerContext,
    scale: float,
) -> torch.Tensor:
    """Store this layer's new keys/values, then attend each query to its sequence's slots.

    query: [n, num_heads, head_dim]; key, value: [n, num_kv_heads, head_dim] for the ``n`` rows
    that run the layer. Returns [n, num_heads * head_dim].
    """
    store_kv(key, value, ctx)
    return attend(query, ctx, scale)


def store_kv(key: torch.Tensor, value: torch.Tensor, ctx: LayerContext) -> None:
    """Write the running rows' keys and values ([n, num_kv_heads, head_dim]) to their slots."""
    ctx.key_cache.index_copy_(1, ctx.write_slots, key.transpose(0, 1))
    ctx.value_cache.index_copy_(1, ctx.write_slots, value.transpose(0, 1))


def attend(query: torch.Tensor, ctx: LayerContext, scale: float) -> torch.Tensor:
    """Attention of the running rows' queries ([n, num_heads, head_dim]) over the layer's stored
    keys and values (this step's included). Returns [n, num_heads * head_dim]."""
    num_kv_heads, _, head_dim = ctx.key_cache.shape
    # One row per (head, block): a block of one head is contiguous, [block_size * head_dim].
    key_rows = ctx.key_cache.view(-1, ctx.block_size * head_dim)
    value_rows = ctx.value_cache.view(key_rows.shape)
    outputs = []
    for group, rows, tables in zip(ctx.plan.groups, ctx.read_rows, ctx.tables):  # <= 2 groups
        if rows is None:  # a decode group, read in place by the CPU kernel (cpu_kernels.py)
            outputs.append(
                ctx.kernels.decode_attention(
                    query.contiguous(),  # a no-op when it already is
                    ctx.key_cache,
                    ctx.value_cache,
                    group.row_index.view(-1),
                    tables,
                    group.kv_lens,
                    ctx.block_size,
                    scale,
                )
            )
            continue
        # index_select along dim 0, not advanced indexing nor dim 1: the fast memcpy path.
        shape = (num_kv_heads, group.num_seqs, -1, head_dim)  # [kv_heads, S, max_kv, head_dim]
        keys = key_rows.index_select(0, rows).view(shape)
        values = value_rows.index_select(0, rows).view(shape)
        queries = _gather(query, group.row_index)  # [S, max_q, heads, head_dim]
        attention = prefill_attention if queries.shape[1] > 1 else grouped_attention
        out = attention(queries, keys, values, group.mask, scale)
        outputs.append(out.reshape(-1, query.shape[1] * head_dim))
    flat = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    return flat if ctx.plan.out_is_identity else flat.index_select(0, ctx.plan.out_index)


def _gather(source: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``source[index]`` for a 2-D ``index`` of rows: [*index.shape, *source.shape[1:]]."""
    return source.index_select(0, index.reshape(-1)).view(*index.shape, *source.shape[1:])


def grouped_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Masked attention with grouped KV heads, as two batched matmuls.

    queries: [S, Q, H, D]; keys, values: [KVH, S, K, D] (head-major, as gathered from the
    pool); mask: [S, 1, Q, K] bool (True: attend). Returns [S, Q, H, D]. The query heads that
    share a KV head are stacked along the query axis, so single-token decodes still make a real
    matrix product (CPU SDPA is slow for them).
    """
    num_seqs, num_q, num_heads, head_dim = queries.shape
    num_kv_heads = keys.shape[0]
    group = num_heads // num_kv_heads
    # [S, Q, KVH, G, D] -> [KVH, S, G * Q, D]
    q = queries.view(num_seqs, num_q, num_kv_heads, group, head_dim).permute(2, 0, 3, 1, 4)
    q = q.reshape(num_kv_heads, num_seqs, group * num_q, head_dim)
    scores = torch.matmul(q, keys.transpose(-1, -2)).float() * scale  # [KVH, S, G * Q, K]
    scores = scores.view(num_kv_heads, num_seqs, group, num_q, -1)
    scores = scores.masked_fill(~mask.view(1, num_seqs, 1, num_q, -1), float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(values.dtype)
    out = torch.matmul(probs.view(num_kv_heads, num_seqs, group * num_q, -1), values)
    out = out.view(num_kv_heads, num_seqs, group, num_q, head_dim).permute(1, 3, 0, 2, 4)
    return out.reshape(num_seqs, num_q, num_heads, head_dim)


def prefill_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """``grouped_attention`` for chunks of many queries, through PyTorch's fused
    ``scaled_dot_product_attention`` (on CPU a blocked kernel that never holds the whole
    [Q, K] score matrix, so long prompts cost memory and time in proportion to their blocks).

    Same shapes and result as ``grouped_attention``; every query row must attend to at least
    one key (the step's masks let padded rows see key 0).
    """
    q = queries.transpose(1, 2)  # [S, H, Q, D]
    k, v = keys.transpose(0, 1), values.transpose(0, 1)  # [S, KVH, K, D]
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )
    return out.transpose(1, 2)  # [S, Q, H, D]


def run_layers(layers: nn.ModuleList, hidden: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """The layer loop: the one place that knows about skipping.

    Each layer runs only on the rows its plan names (a prefix of the depth-sorted rows in the
    common case); the other rows bypass it unchanged. Decoder layers stay plain modules that take
    ``(hidden, LayerContext)``.
    """
    for index, layer in enumerate(layers):
        layer_ctx = ctx.layer(index)
        plan = layer_ctx.plan
        if plan.num_tokens == 0:
            continue
        if plan.rows is None:
            if plan.num_tokens == hidden.shape[0]:
                hidden = layer(hidden, layer_ctx)
            else:
                hidden[: plan.num_tokens] = layer(hidden[: plan.num_tokens], layer_ctx)
        else:
            hidden.index_copy_(0, plan.rows, layer(hidden[plan.rows], layer_ctx))
    return hidden
