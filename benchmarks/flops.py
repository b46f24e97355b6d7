"""FLOPs of a decoder-only model, from its Hugging Face config, and the FLOP-ideal skip gain.

One multiply-add counts as 2 FLOPs. For one token at context length ``c`` (the keys it attends
to, itself included):

    layer_flops(c) = 2 * P_layer + 4 * num_heads * head_dim * c
    head_flops     = 2 * P_head

``P_layer`` counts the weights of the layer's matmuls (q, k, v, o projections and the MLP:
gate/up/down for Llama-style models, fc1/fc2 for OPT); ``4 * num_heads * head_dim * c`` is the
score (``q·k``) and value (``p·v``) products. ``P_head`` is the LM head (``hidden * vocab``, plus
OPT's ``project_out``). Norms, rotary, softmax, activations and the embedding lookup are left
out: they are a few FLOPs per element, not per weight.

A token of depth ``D`` costs ``D * layer_flops(c) + head_flops``: skipping never saves the LM
head. The FLOP-ideal gain of a schedule is the full-depth cost per generated token divided by the
schedule's (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFlops:
    """Per-token FLOP figures of one model."""

    num_layers: int
    layer_matmul_params: int  # weights of one decoder layer's matmuls
    head_matmul_params: int  # weights of the LM head (and OPT's project_out)
    attention_width: int  # num_heads * head_dim

    @classmethod
    def from_hf_config(cls, config) -> ModelFlops:
        hidden = config.hidden_size
        num_heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or hidden // num_heads
        num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
        q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
        attention = hidden * q_size + 2 * hidden * kv_size + q_size * hidden
        if config.model_type == "opt":
            mlp = 2 * hidden * config.ffn_dim
            proj_dim = config.word_embed_proj_dim
            head = proj_dim * config.vocab_size + (hidden * proj_dim if proj_dim != hidden else 0)
        else:  # Llama-style gated MLP
            mlp = 3 * hidden * config.intermediate_size
            head = hidden * config.vocab_size
        return cls(config.num_hidden_layers, attention + mlp, head, q_size)

    def layer_flops(self, context_len: float) -> float:
        """One token through one decoder layer, attending to ``context_len`` positions."""
        return 2 * self.layer_matmul_params + 4 * self.attention_width * context_len

    @property
    def head_flops(self) -> float:
        return 2 * self.head_matmul_params

    def token_flops(self, depth: int, context_len: float) -> float:
        """One token of ``depth`` layers, through the LM head."""
        return depth * self.layer_flops(context_len) + self.head_flops

    def decode_flops(self, depths: Sequence[int], prompt_len: int) -> float:
        """Generated tokens fed back with ``depths``, at their mean context length."""
        if not depths:
            return 0.0
        # The g-th fed token sits at position prompt_len + g and attends to positions 0..itself.
        mean_context = prompt_len + (len(depths) + 1) / 2
        return sum(self.token_flops(d, mean_context) for d in depths)

    def prefill_flops(self, prompt_len: int) -> float:
        """All prompt tokens at full depth; the LM head only for the last one."""
        mean_context = (prompt_len + 1) / 2
        return prompt_len * self.num_layers * self.layer_flops(mean_context) + self.head_flops


def fed_depths(depths: Sequence[int]) -> Sequence[int]:
    """The depths of the generated tokens that are fed back: all but the last one.

    The last generated token is sampled and returned, never run through the model.
    """
    return depths[:-1]


def flop_ideal_gains(
    flops: ModelFlops, prompt_len: int, depth_lists: Sequence[Sequence[int]]
) -> tuple[float, float]:
    """(decode-only, end-to-end) FLOP-ideal gain of requests that generated with these depths.

    Decode-only compares FLOPs per fed generated token with full depth; end-to-end also counts
    each request's prefill, which skipping does not touch.
    """
    fed = [fed_depths(d) for d in depth_lists]
    skip_decode = sum(flops.decode_flops(d, prompt_len) for d in fed)
    full_decode = sum(flops.decode_flops([flops.num_layers] * len(d), prompt_len) for d in fed)
    prefill = len(depth_lists) * flops.prefill_flops(prompt_len)
    decode_gain = full_decode / skip_decode if skip_decode else 1.0
    e2e_gain = (full_decode + prefill) / (skip_decode + prefill)
    return decode_gain, e2e_gain
