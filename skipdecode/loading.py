"""Load a model, its config and tokenizer for the engine (from a ModelConfig)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from torch import nn

from skipdecode.checkpoint_schedule import read_schedule
from skipdecode.config import ModelConfig
from skipdecode.model_runner.adapter import (
    Adapter,
    load_adapter,
    serves_by_default,
    shipped_adapter_path,
)
from skipdecode.model_runner.loader import build_model
from skipdecode.model_runner.models import kv_head_shape
from skipdecode.model_runner.weights import load_hf_config, load_tokenizer, resolve_model_path
from skipdecode.scheduler import PresetFamily, SkipConfig

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A ready model with what the engine needs to know about it."""

    model: nn.Module
    hf_config: object
    tokenizer: object | None  # None for checkpoints without tokenizer files (token ids only)
    max_model_len: int
    kv_shape: tuple[int, int]  # (num_kv_heads, head_dim)
    eos_token_ids: frozenset[int]
    default_skip: SkipConfig | None = None  # skip_schedule.json's default, if any
    preset_family: PresetFamily | None = None  # the warm-up and decay its schedules trained with
    adapter_path: str | None = None  # the LoRA adapter merged into the weights, if any
    quantization: str = "none"  # resolved: none | int8 | int4 | gguf (blocks as stored)


def resolve_adapter(config: ModelConfig) -> str | None:
    """The adapter directory ``config.adapter`` names, or None for the plain model.

    ``"auto"`` picks the adapter shipped for the default model, only when the default model is
    loaded with real weights (an adapter trained for SmolLM2 means nothing to another model) and
    the adapter is marked to serve by default; ``"shipped"`` picks it whatever its mark.
    """
    if config.adapter in (None, "none"):
        return None
    if config.adapter == "auto":
        if config.model is not None or config.load_format == "dummy":
            return None
        shipped = shipped_adapter_path()
        return shipped if shipped is not None and serves_by_default(shipped) else None
    if config.adapter == "shipped":
        shipped = shipped_adapter_path()
        if shipped is None:
            raise ValueError("adapter='shipped': this package holds no shipped adapter")
        return shipped
    return config.adapter


def resolve_quantization(config: ModelConfig, path: str, adapter: Adapter | None) -> str:
    """What ``config.quantization`` means for the model at ``path``: none, int8, int4 or gguf.

    ``"auto"`` is ``"gguf"`` (Q4_0/Q4_1/Q8_0 blocks served as stored) for a GGUF file whose
    weights are served as they are (real weights, no adapter merged into them) on CPU in bf16,
    the activation dtype PyTorch's weight-only kernels are vectorized for. Anything else (a
    safetensors directory, CUDA, fp32 or fp16, random weights, a merged adapter) is ``"none"``.
    """
    if config.quantization != "auto":
        return config.quantization
    is_merged = adapter is not None and adapter.apply_to == "all"
    is_as_stored = os.path.isfile(path) and config.load_format != "dummy" and not is_merged
    is_fast = config.torch_device.type == "cpu" and config.torch_dtype == torch.bfloat16
    return "gguf" if is_as_stored and is_fast else "none"


def _warn_if_scalar(quantization: str, dtype: torch.dtype) -> None:
    if quantization != "none" and dtype != torch.bfloat16:
        logger.warning(
            "quantization %s with %s activations: PyTorch's weight-only CPU kernels are"
            " vectorized for bfloat16 only and run a scalar loop here, many times slower than"
            " a float matmul (saves memory, not time); --dtype bfloat16 takes the fast path",
            quantization,
            str(dtype).removeprefix("torch."),
        )


def load_model(config: ModelConfig) -> LoadedModel:
    """Resolve the path, then load config, tokenizer, adapter and weights onto the device."""
    path = resolve_model_path(config.model)
    hf_config = load_hf_config(path)
    tokenizer = None if config.skip_tokenizer_init else _try_tokenizer(path)
    adapter_path = resolve_adapter(config)
    adapter = None if adapter_path is None else _load_adapter(adapter_path, path)
    # The adapter's schedule wins: it records what the merged weights were trained for. Both
    # are read (and checked against the model) before the weights, so a bad file fails fast.
    default_skip, family = read_schedule(path, hf_config.num_hidden_layers)
    if adapter_path is not None:
        adapter_skip, adapter_family = read_schedule(adapter_path, hf_config.num_hidden_layers)
        default_skip, family = adapter_skip or default_skip, adapter_family or family
    weights_path = None if config.load_format == "dummy" else path
    quantization = resolve_quantization(config, path, adapter)
    _warn_if_scalar(quantization, config.torch_dtype)
    model = build_model(
        hf_config,
        weights_path,
        config.torch_dtype,
        config.torch_device,
        adapter=adapter,
        quantization=quantization,
        group_size=config.quantization_group_size,
    )
    return LoadedModel(
        model=model,
        hf_config=hf_config,
        tokenizer=tokenizer,
        max_model_len=hf_config.max_position_embeddings,
        kv_shape=kv_head_shape(hf_config),
        eos_token_ids=eos_token_ids(hf_config, tokenizer),
        default_skip=default_skip,
        preset_family=family,
        adapter_path=adapter_path,
        quantization=quantization,
    )


def _load_adapter(adapter_path: str, model_path: str) -> Adapter:
    adapter = load_adapter(adapter_path)
    trained_for = adapter.base_model
    if trained_for and trained_for != os.path.basename(os.path.normpath(model_path)):
        # Not an error: the same weights may live under another name (an HF export, a copy).
        logger.warning(
            "adapter %s was trained for %s, merging it into %s",
            adapter_path,
            trained_for,
            model_path,
        )
    logger.info(
        "merging LoRA adapter %s (rank %d, alpha %g)", adapter_path, adapter.rank, adapter.alpha
    )
    return adapter


def eos_token_ids(hf_config, tokenizer) -> frozenset[int]:
    ids: set[int] = set()
    configured = getattr(hf_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


def _try_tokenizer(path: str):
    try:
        tokenizer = load_tokenizer(path)
    except (OSError, ValueError) as exc:
        logger.warning("no tokenizer at %s (%s): prompts must be token ids", path, exc)
        return None
    if tokenizer.vocab_size == 0:  # transformers' fallback for a folder with config.json only
        logger.warning("empty tokenizer at %s: prompts must be token ids", path)
        return None
    return tokenizer
