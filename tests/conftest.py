"""Shared fixtures: tiny random-weight checkpoints on disk, the default model's tokenizer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/reference.py, tests/factories


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    # The GGUF tokenizer conversion is cached; keep the cache inside the test session.
    cache = tmp_path_factory.mktemp("skipdecode-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("SKIPDECODE_CACHE", str(cache))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def smollm_tokenizer(_isolated_cache):
    from skipdecode.model_runner.weights import default_model_path, load_tokenizer

    return load_tokenizer(default_model_path())


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm_tokenizer) -> Path:
    """A tiny random Llama checkpoint (HF dir) that shares SmolLM2's tokenizer."""
    from tiny_models import save_tiny

    return save_tiny("llama", tmp_path_factory.mktemp("tiny-llama"), smollm_tokenizer)


@pytest.fixture(scope="session")
def tiny_llama_4k_dir(tmp_path_factory, smollm_tokenizer) -> Path:
    """The tiny Llama with a 4,096-token context, for streams that run for seconds."""
    from tiny_models import save_tiny

    directory = tmp_path_factory.mktemp("tiny-llama-4k")
    return save_tiny("llama", directory, smollm_tokenizer, max_positions=4096)


@pytest.fixture(scope="session")
def tiny_opt_dir(tmp_path_factory, smollm_tokenizer) -> Path:
    from tiny_models import save_tiny

    return save_tiny("opt", tmp_path_factory.mktemp("tiny-opt"), smollm_tokenizer)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
