"""load_model: with or without a tokenizer."""

from __future__ import annotations

from tiny_models import save_tiny

from skipdecode.config import ModelConfig
from skipdecode.loading import load_model


def test_skip_tokenizer_init_loads_no_tokenizer(tiny_llama_dir):
    loaded = load_model(ModelConfig(model=str(tiny_llama_dir), skip_tokenizer_init=True))
    assert loaded.tokenizer is None
    with_tokenizer = load_model(ModelConfig(model=str(tiny_llama_dir)))
    assert len(with_tokenizer.tokenizer) > 0


def test_config_only_folder_gets_no_tokenizer_rather_than_an_empty_one(tmp_path):
    """transformers answers a folder without tokenizer files with an empty GPT-2 tokenizer
    for some model types (OPT); the engine must see None, so prompts are token ids."""
    model_dir = save_tiny("opt", tmp_path / "opt")  # weights and config.json, no tokenizer
    (model_dir / "model.safetensors").unlink()
    loaded = load_model(ModelConfig(model=str(model_dir), load_format="dummy", dtype="float32"))
    assert loaded.tokenizer is None
    assert loaded.model.num_layers == loaded.hf_config.num_hidden_layers
