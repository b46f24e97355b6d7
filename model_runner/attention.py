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
    ctx.key_cache.index_copy_(0, ctx.write_slots, key)
    ctx.value_cache.index_copy_(0, ctx.write_slots, value)
    num_heads, head_dim = query.shape[1], query.shape[2]
    outputs = []
    for group in ctx.plan.groups:  # at most two: single-token queries, and longer chunks
        tables = ctx.block_table[group.seq_index]  # [S, max_blocks]
        positions = group.key_positions
        slots = tables[:, positions // ctx.block_size] * ctx.block_size + positions % ctx.block_size
        keys = ctx.key_cache[slots].transpose(1, 2)  # [S, kv_heads, max_kv, head_dim]
        values = ctx.value_cache[slots].transpose(1, 2)
        queries = query[group.row_index].transpose(1, 2)  # [S, heads, max_q, head_dim]
        out = F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=group.mask, scale=scale, enable_gqa=True
        )  # [S, heads, max_q, head_dim]
        outputs.append(out.transpose(1, 2).reshape(-1, num_heads * head_dim))
    flat = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    return flat[ctx.plan.out_index]


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
