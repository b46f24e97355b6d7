"""Load a model, its config and tokenizer for the engine (from a ModelConfig)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

from skipdecode.checkpoint_schedule import read_skip_schedule
from skipdecode.config import ModelConfig
from skipdecode.model_runner.loader import build_model
from skipdecode.model_runner.models import kv_head_shape
from skipdecode.model_runner.weights import load_hf_config, load_tokenizer, resolve_model_path
from skipdecode.scheduler import SkipConfig

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
    default_skip: SkipConfig | None = None  # the checkpoint's skip_schedule.json default, if any


def load_model(config: ModelConfig) -> LoadedModel:
    """Resolve the path, then load config, tokenizer and weights onto the configured device."""
    path = resolve_model_path(config.model)
    hf_config = load_hf_config(path)
    tokenizer = None if config.skip_tokenizer_init else _try_tokenizer(path)
    default_skip = read_skip_schedule(path, hf_config.num_hidden_layers)  # fails before weights
    weights_path = None if config.load_format == "dummy" else path
    model = build_model(hf_config, weights_path, config.torch_dtype, config.torch_device)
    return LoadedModel(
        model=model,
        hf_config=hf_config,
        tokenizer=tokenizer,
        max_model_len=hf_config.max_position_embeddings,
        kv_shape=kv_head_shape(hf_config),
        eos_token_ids=eos_token_ids(hf_config, tokenizer),
        default_skip=default_skip,
    )


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
