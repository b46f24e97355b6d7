"""Tiny random-weight Hugging Face models, built in code, for numerical tests."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

NUM_LAYERS = 8
VOCAB = 49152  # SmolLM2's, so the tiny models can share its tokenizer


def tiny_config(kind: str, vocab_size: int = VOCAB, max_positions: int = 512):
    common = dict(
        vocab_size=vocab_size, max_position_embeddings=max_positions, attn_implementation="eager"
    )
    if kind == "llama":
        return LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=NUM_LAYERS,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_theta=10000.0,
            tie_word_embeddings=True,
            eos_token_id=2,
            **common,
        )
    if kind == "qwen2":
        return Qwen2Config(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=NUM_LAYERS,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
            eos_token_id=2,
            **common,
        )
    if kind == "opt":
        return OPTConfig(
            hidden_size=64,
            ffn_dim=128,
            num_hidden_layers=NUM_LAYERS,
            num_attention_heads=4,
            word_embed_proj_dim=32,
            eos_token_id=2,
            **common,
        )
    raise ValueError(kind)


def tiny_hf_model(kind: str, vocab_size: int = VOCAB, seed: int = 0, max_positions: int = 512):
    torch.manual_seed(seed)
    cls = {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM, "opt": OPTForCausalLM}[kind]
    model = cls(tiny_config(kind, vocab_size, max_positions)).eval()
    # Larger-than-default weights give peaked, decisive distributions, so greedy paths do not
    # hinge on float rounding; biases get values too, so their loading is tested.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.1)
            elif "norm" not in name:
                param.normal_(0, 0.08)
    return model


def save_tiny(kind: str, directory: Path, tokenizer=None, max_positions: int = 512) -> Path:
    model = tiny_hf_model(kind, max_positions=max_positions)
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def load_hf(directory: Path):
    return AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
