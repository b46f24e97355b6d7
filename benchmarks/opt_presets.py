"""OPT configs written in code (the SkipDecode paper's models), built with random weights.

No download and no tokenizer: ``config.json`` is written to a temporary directory, read back the
way any checkpoint's config is, and the model is built with random weights (what
``ModelConfig(load_format="dummy")`` does). Prompts are token ids, so no tokenizer is needed.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

# Published hyperparameters (Zhang et al., 2022, Table 1): (hidden, layers, heads, ffn).
OPT_SHAPES = {
    "1.3b": (2048, 24, 32, 8192),
    "6.7b": (4096, 32, 32, 16384),
}
OPT_VOCAB_SIZE = 50272
OPT_MAX_POSITIONS = 2048
# A CPU-sized stand-in for smoke tests: 12 layers so that 5x is reachable (L / (warm-up + 1) = 6).
TINY_SHAPE = (64, 12, 4, 256)
TINY_VOCAB_SIZE = 512
TINY_MAX_POSITIONS = 512
PRESETS = ("tiny", *OPT_SHAPES)


def opt_config(preset: str):
    """The ``transformers.OPTConfig`` of ``preset`` (``tiny``, ``1.3b`` or ``6.7b``)."""
    from transformers import OPTConfig

    if preset == "tiny":
        shape, vocab, positions = TINY_SHAPE, TINY_VOCAB_SIZE, TINY_MAX_POSITIONS
    elif preset in OPT_SHAPES:
        shape, vocab, positions = OPT_SHAPES[preset], OPT_VOCAB_SIZE, OPT_MAX_POSITIONS
    else:
        raise ValueError(f"unknown OPT preset {preset!r} (choose from {', '.join(PRESETS)})")
    hidden, num_layers, num_heads, ffn_dim = shape
    return OPTConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        ffn_dim=ffn_dim,
        max_position_embeddings=positions,
        word_embed_proj_dim=hidden,
        do_layer_norm_before=True,
        activation_function="relu",
        enable_bias=True,
        layer_norm_elementwise_affine=True,
        tie_word_embeddings=True,
        architectures=["OPTForCausalLM"],
    )


@dataclass
class RandomOPT:
    """A random-weight OPT ready for an engine, with what the bench reports about it."""

    preset: str
    loaded: object  # skipdecode.loading.LoadedModel, tokenizer None
    num_params: int  # parameters, tied embeddings counted once
    load_s: float  # seconds to write the config and build the model

    def describe(self) -> dict:
        config = self.loaded.hf_config
        return {
            "preset": self.preset,
            "num_layers": config.num_hidden_layers,
            "hidden_size": config.hidden_size,
            "num_attention_heads": config.num_attention_heads,
            "ffn_dim": config.ffn_dim,
            "vocab_size": config.vocab_size,
            "num_params": self.num_params,
            "load_s": self.load_s,
            "dtype": str(next(self.loaded.model.parameters()).dtype).removeprefix("torch."),
            "device": str(next(self.loaded.model.parameters()).device),
        }


def load_random_opt(preset: str, dtype: str, device: str) -> RandomOPT:
    """Write ``preset``'s config.json to a temp dir, then load it with random weights and no
    tokenizer (prompts are token ids)."""
    from skipdecode.config import ModelConfig
    from skipdecode.loading import load_model

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"opt-{preset}-") as directory:
        opt_config(preset).save_pretrained(directory)  # config.json only
        model_config = ModelConfig(
            model=directory,
            dtype=dtype,
            device=device,
            load_format="dummy",
            skip_tokenizer_init=True,
        )
        loaded = load_model(model_config)
    num_params = sum(p.numel() for p in loaded.model.parameters())
    _synchronize(model_config.torch_device)
    return RandomOPT(preset, loaded, num_params, time.perf_counter() - start)


def estimated_params(preset: str) -> int:
    """Parameter count of ``preset`` from its shape (before building it; time estimates)."""
    config = opt_config(preset)
    hidden, ffn = config.hidden_size, config.ffn_dim
    per_layer = 4 * hidden * hidden + 2 * hidden * ffn + 9 * hidden + ffn
    embeddings = (config.vocab_size + config.max_position_embeddings + 2) * hidden
    return config.num_hidden_layers * per_layer + embeddings + 2 * hidden


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
