"""Rotary position embedding with a precomputed cos/sin table indexed by position."""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS


class RotaryEmbedding(nn.Module):
    """Applies RoPE (``rotate_half`` layout, as Hugging Face Llama) at arbitrary positions."""

    def __init__(self, config) -> None:
        super().__init__()
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)
        self.rebuild(config, self.cos.device)

    def rebuild(self, config, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        """(Re)compute the cos/sin tables, e.g. after the model left the meta device.

        They are computed in fp32 and stored in the activation dtype, which is exactly what
        Hugging Face does per call (cos/sin cast to the query dtype).
        """
        inv_freq, scaling = _inverse_frequencies(config)
        positions = torch.arange(config.max_position_embeddings, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq.float())
        emb = torch.cat((freqs, freqs), dim=-1).to(device)  # [max_positions, head_dim]
        self.cos = (emb.cos() * scaling).to(dtype)
        self.sin = (emb.sin() * scaling).to(dtype)
        self._positions: torch.Tensor | None = None  # the last positions seen, and their rows
        self._cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # q: [n, heads, head_dim], k: [n, kv_heads, head_dim]; cos/sin: [n, 1, head_dim]
        if positions is not self._positions:  # layers sharing a plan share its positions
            cos = self.cos.index_select(0, positions).unsqueeze(1)
            sin = self.sin.index_select(0, positions).unsqueeze(1)
            self._positions, self._cos_sin = positions, (cos, sin)  # held: the id stays unique
        cos, sin = self._cos_sin
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope_parameters(config) -> dict:
    params = getattr(config, "rope_parameters", None)
    if params:
        return dict(params)
    # Older transformers: rope_theta and rope_scaling live directly on the config.
    params = dict(getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return params


def _inverse_frequencies(config) -> tuple[torch.Tensor, float]:
    params = _rope_parameters(config)
    rope_type = params.get("rope_type", params.get("type", "default"))
    head_dim = getattr(config, "head_dim", None) or (
        config.hidden_size // config.num_attention_heads
    )
    if rope_type == "default":
        base = params["rope_theta"]
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
        inv_freq, scaling = 1.0 / (base**exponents), 1.0
    else:
        # Scaled variants (llama3, linear, yarn, ...) come from transformers itself.
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))
    return inv_freq, scaling
