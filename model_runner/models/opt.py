"""OPT decoder (the SkipDecode paper's model family) for flat token batches."""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from skipdecode.model_runner.attention import paged_attention, run_layers
from skipdecode.model_runner.context import LayerContext, StepContext

POSITION_OFFSET = 2  # OPT's learned positions start at index 2 (a fairseq legacy)


class OPTAttention(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        bias = config.enable_bias
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=bias)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        n = x.shape[0]
        q = self.q_proj(x).view(n, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(n, self.num_heads, self.head_dim)
        v = self.v_proj(x).view(n, self.num_heads, self.head_dim)
        return self.out_proj(paged_attention(q, k, v, ctx, scale=self.head_dim**-0.5))


class OPTDecoderLayer(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        affine = config.layer_norm_elementwise_affine
        self.self_attn = OPTAttention(config)
        self.self_attn_layer_norm = nn.LayerNorm(config.hidden_size, elementwise_affine=affine)
        self.fc1 = nn.Linear(config.hidden_size, config.ffn_dim, bias=config.enable_bias)
        self.fc2 = nn.Linear(config.ffn_dim, config.hidden_size, bias=config.enable_bias)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, elementwise_affine=affine)
        self.activation = ACT2FN[config.activation_function]
        # OPT-350m normalises after each block; every other size before.
        self.norm_before = config.do_layer_norm_before

    def forward(self, x: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        h = self.self_attn_layer_norm(x) if self.norm_before else x
        x = x + self.self_attn(h, ctx)
        if not self.norm_before:
            x = self.self_attn_layer_norm(x)
        h = self.final_layer_norm(x) if self.norm_before else x
        x = x + self.fc2(self.activation(self.fc1(h)))
        return x if self.norm_before else self.final_layer_norm(x)


class OPTDecoder(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        proj_dim = config.word_embed_proj_dim
        self.embed_tokens = nn.Embedding(config.vocab_size, proj_dim)
        self.embed_positions = nn.Embedding(
            config.max_position_embeddings + POSITION_OFFSET, config.hidden_size
        )
        needs_projection = proj_dim != config.hidden_size
        self.project_in = (
            nn.Linear(proj_dim, config.hidden_size, bias=False) if needs_projection else None
        )
        self.project_out = (
            nn.Linear(config.hidden_size, proj_dim, bias=False) if needs_projection else None
        )
        has_final_norm = config.do_layer_norm_before and not getattr(
            config, "_remove_final_layer_norm", False
        )
        self.final_layer_norm = (
            nn.LayerNorm(
                config.hidden_size, elementwise_affine=config.layer_norm_elementwise_affine
            )
            if has_final_norm
            else None
        )
        self.layers = nn.ModuleList(
            OPTDecoderLayer(config) for _ in range(config.num_hidden_layers)
        )

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: StepContext):
        x = self.embed_tokens(input_ids)
        if self.project_in is not None:
            x = self.project_in(x)
        x = x + self.embed_positions(positions + POSITION_OFFSET)
        return run_layers(self.layers, x, ctx)

    def finish(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.final_layer_norm is not None:
            hidden = self.final_layer_norm(hidden)
        if self.project_out is not None:
            hidden = self.project_out(hidden)
        return hidden


class OPTModel(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.decoder = OPTDecoder(config)


class OPTForCausalLM(nn.Module):
    """Flat tokens in (depth-sorted rows), hidden states out; logits on selected rows only."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.model = OPTModel(config)
        self.lm_head = nn.Linear(config.word_embed_proj_dim, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the LM head with the input embedding when the config says so."""
        if getattr(self.config, "tie_word_embeddings", True):
            self.lm_head.weight = self.model.decoder.embed_tokens.weight

    @property
    def num_layers(self) -> int:
        return len(self.model.decoder.layers)

    def forward(self, input_ids: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return self.model.decoder(input_ids, ctx.positions, ctx)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.model.decoder.finish(hidden))
