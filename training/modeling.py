"""Load a trainable Hugging Face causal LM (HF directory or .gguf), its tokenizer, LoRA."""

from __future__ import annotations

import os

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from skipdecode.model_runner.adapter import load_adapter, merge_weights
from skipdecode.model_runner.weights import (
    iter_weights,
    load_hf_config,
    load_tokenizer,
    resolve_model_path,
)

LORA_TARGETS = {  # every linear layer of the decoder blocks (the LM head stays frozen)
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}


def pick_device(device: str) -> torch.device:
    """``auto``: CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_causal_lm(
    model: str | None, device: torch.device, adapter: str | None = None
) -> nn.Module:
    """fp32 weights of ``model`` (None: the default model). A .gguf file is dequantized.
    ``adapter`` (a directory, or None/"none") is merged into the weights, as the engine does.

    GGUF weights come through the engine's own reader (:func:`iter_weights`, Hugging Face names)
    into a model built from the config: transformers' GGUF loading would mark the model as
    quantized, and such a model refuses ``save_pretrained``.
    """
    lm = _load_plain(resolve_model_path(model))
    if adapter not in (None, "none"):
        loaded = load_adapter(adapter)
        if loaded.config.get("apply_to", "all") == "skipping":
            return _gated(lm, loaded).to(device)
        merged_weights = merge_weights(lm.state_dict().items(), loaded)
        lm.load_state_dict(dict(merged_weights))
    return lm.to(device)


def _gated(lm: nn.Module, adapter) -> nn.Module:
    """``lm`` with a gated adapter as PEFT LoRA modules (training/gated_lora.py)."""
    from skipdecode.training.gated_lora import gate_lora

    targets = sorted({key.rsplit(".", 2)[-2] for key in adapter.lora})
    peft_model = apply_lora(lm, adapter.rank, adapter.alpha, targets=targets)
    params = dict(peft_model.named_parameters())
    with torch.no_grad():
        for key, (a, b) in adapter.lora.items():
            prefix = "base_model.model." + key.removesuffix(".weight")
            params[f"{prefix}.lora_A.default.weight"].copy_(a.float())
            params[f"{prefix}.lora_B.default.weight"].copy_(b.float())
    peft_model.requires_grad_(False)
    gate_lora(peft_model)
    return peft_model


def _load_plain(path: str) -> nn.Module:
    if os.path.isdir(path):
        return AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, attn_implementation="sdpa"
        )
    config = load_hf_config(path)
    lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    missing, unexpected = lm.load_state_dict(dict(iter_weights(path)), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"{path}: missing tensors {missing}, unexpected tensors {unexpected}")
    lm.tie_weights()
    return lm


def load_training_tokenizer(model: str | None):
    """The tokenizer the engine uses for ``model``, with a pad id (EOS when it has none)."""
    tokenizer = load_tokenizer(resolve_model_path(model))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_teacher(model: str | None, device: torch.device) -> nn.Module:
    """A frozen full-depth model for self-distillation."""
    teacher = load_causal_lm(model, device).eval()
    teacher.requires_grad_(False)
    return teacher


def apply_lora(
    model: nn.Module,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    targets: list[str] | None = None,
) -> nn.Module:
    """Wrap ``model`` with LoRA adapters on every decoder linear layer (only they train), or on
    the ``targets`` module names."""
    from peft import LoraConfig, get_peft_model

    kind = model.config.model_type
    if targets is None and kind not in LORA_TARGETS:
        raise ValueError(f"LoRA targets unknown for model type {kind!r}")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets or LORA_TARGETS[kind],
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def merged(model: nn.Module) -> nn.Module:
    """A plain HF model: LoRA adapters merged into the weights (unchanged if not PEFT)."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters the optimizer updates, by name (all for full fine-tuning, adapters for LoRA)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}
