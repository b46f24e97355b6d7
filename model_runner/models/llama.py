"""Llama-family decoder (Llama, SmolLM2, Qwen2, Mistral-style configs) for flat token batches."""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from skipdecode.model_runner import ops
from skipdecode.model_runner.attention import attend, paged_attention, run_layers
from skipdecode.model_runner.context import LayerContext, StepContext
from skipdecode.model_runner.models.rotary import RotaryEmbedding


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 as Hugging Face does, then scale in the activation dtype.
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.to(x.dtype)


class LlamaAttention(nn.Module):
    def __init__(self, config, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        bias = getattr(config, "attention_bias", False) or config.model_type == "qwen2"
        hidden, q_size = config.hidden_size, self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(hidden, q_size, bias=bias)
        self.k_proj = nn.Linear(hidden, kv_size, bias=bias)
        self.v_proj = nn.Linear(hidden, kv_size, bias=bias)
        self.o_proj = nn.Linear(q_size, hidden, bias=getattr(config, "attention_bias", False))
        self.qkv_proj: nn.Module | None = None  # q, k, v in one matmul (cpu_packing.py)
        self.qkv_sizes = (q_size, kv_size, kv_size)
        self.rotary = rotary  # shared, not a parameter owner

    def forward(self, x: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        n, scale = x.shape[0], self.head_dim**-0.5
        if self.qkv_proj is not None:
            q, k, v = self.qkv_proj(x).split(self.qkv_sizes, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if ctx.kernels is not None:  # RoPE and the KV store in one pass
            q = ops.rotary_store(q, k, v, self.rotary, ctx)
            return self.o_proj(attend(q, ctx, scale))
        q = q.reshape(n, self.num_heads, self.head_dim)
        k = k.reshape(n, self.num_kv_heads, self.head_dim)
        v = v.reshape(n, self.num_kv_heads, self.head_dim)
        q, k = self.rotary(ctx.plan.positions, q, k)
        return self.o_proj(paged_attention(q, k, v, ctx, scale))


class LlamaMLP(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        bias = getattr(config, "mlp_bias", False)
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)
        self.gate_up_proj: nn.Module | None = None  # gate and up in one matmul (cpu_packing.py)

    def forward(self, x: torch.Tensor, kernels: ModuleType | None = None) -> torch.Tensor:
        if self.gate_up_proj is not None:
            return self.down_proj(ops.silu_and_mul(self.gate_up_proj(x), kernels))
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, rotary)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        kernels = ctx.kernels
        attn = self.self_attn(ops.rms_norm(x, self.input_layernorm, kernels), ctx)
        x, h = ops.add_rms_norm(attn, x, self.post_attention_layernorm, kernels)
        return x + self.mlp(h, kernels)


class LlamaModel(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        rotary = RotaryEmbedding(config)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, rotary) for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = rotary

    def forward(self, input_ids: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return run_layers(self.layers, self.embed_tokens(input_ids), ctx)


class LlamaForCausalLM(nn.Module):
    """Flat tokens in (depth-sorted rows), hidden states out; logits on selected rows only."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the LM head with the input embedding when the config says so."""
        if getattr(self.config, "tie_word_embeddings", False):
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def num_layers(self) -> int:
        return len(self.model.layers)

    def forward(self, input_ids: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return self.model(input_ids, ctx)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head for the rows that need logits: [R, hidden] -> [R, vocab]."""
        return self.lm_head(self.model.norm(hidden))
