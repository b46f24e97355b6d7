"""Weight loading tests on tiny random checkpoints written in the test (HF dir and GGUF).

GGUF files are written the way llama.cpp's converter writes them (gguf's own HF->GGUF name map,
llama.cpp's q/k row permutation, 1-D tensors kept F32) and read back through iter_weights. Every
result is checked against the original HF tensors and against transformers' own GGUF loader.
Tests on the real SmolLM2 file live in test_weights_default_model.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

from skipdecode.model_runner.gguf_loader import unpermute_rotary_rows
from skipdecode.model_runner.weights import (
    iter_weights,
    load_hf_config,
    load_tokenizer,
    resolve_model_path,
    tokenizer_cache_dir,
)

QTYPE = gguf.GGMLQuantizationType
ARCHES = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}


def tiny_model(arch: str = "llama", tie: bool = False) -> transformers.PreTrainedModel:
    """A random 2-layer model with grouped-query attention and q/k/v biases."""
    torch.manual_seed(0)
    sizes = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=320,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
    )
    if arch == "llama":
        config = transformers.LlamaConfig(attention_bias=True, **sizes)
        model = transformers.LlamaForCausalLM(config)
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**sizes))
    with torch.no_grad():  # norm weights init to 1.0; random values make mix-ups visible
        for param in model.parameters():
            if param.ndim == 1:
                param.normal_(0.0, 0.5)
    return model.eval()


def llama_cpp_permute(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """LlamaModel.permute from llama.cpp's convert_hf_to_gguf.py, verbatim."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_gguf(
    path: Path,
    model: transformers.PreTrainedModel,
    qtype: gguf.GGMLQuantizationType = QTYPE.F32,
    arch: str = "llama",
    extra: dict[str, tuple[np.ndarray, gguf.GGMLQuantizationType | None]] | None = None,
) -> str:
    """Write `model` as llama.cpp's converter would; `extra` adds (data, raw type) by name."""
    cfg = model.config
    num_heads, num_kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(num_heads)
    writer.add_head_count_kv(num_kv_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(cfg.hidden_size // num_heads)
    writer.add_vocab_size(cfg.vocab_size)
    name_map = gguf.get_tensor_name_map(ARCHES[arch], cfg.num_hidden_layers)
    for hf_name, tensor in hf_tensors(model).items():
        w = tensor.numpy()
        if arch == "llama" and ".q_proj." in hf_name:  # qwen2 is converted unpermuted
            w = llama_cpp_permute(w, num_heads, num_heads)
        elif arch == "llama" and ".k_proj." in hf_name:
            w = llama_cpp_permute(w, num_heads, num_kv_heads)
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if w.ndim == 1:  # llama.cpp keeps norms and biases in F32
            writer.add_tensor(gguf_name, w)
        else:
            writer.add_tensor(gguf_name, gguf.quants.quantize(w, qtype), raw_dtype=qtype)
    # llama3-style rope scaling table: not a weight, must be skipped.
    writer.add_tensor("rope_freqs.weight", np.ones(8, dtype=np.float32))
    for name, (data, raw_dtype) in (extra or {}).items():
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def hf_tensors(model: transformers.PreTrainedModel) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint holds: state_dict without a tied lm_head."""
    tensors = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        del tensors["lm_head.weight"]
    return tensors


def quantization_tolerance(w: torch.Tensor, qtype: gguf.GGMLQuantizationType) -> torch.Tensor:
    """Per-element error bound: half a quantization step, plus fp16 rounding of the scales."""
    if qtype == QTYPE.F32:
        return torch.zeros_like(w)
    if qtype == QTYPE.F16:
        return w.abs() * 2**-11 + 2**-25  # the constant covers fp16 subnormals
    if qtype == QTYPE.BF16:
        return w.abs() * 2**-8
    blocks = w.reshape(-1, 32)  # [num_blocks, 32]: Q8_0, Q4_0 and Q4_1 scale 32-value blocks
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    value_range = blocks.amax(dim=1, keepdim=True) - blocks.amin(dim=1, keepdim=True)
    # Q4_0 maps the absmax to -8, so values of the other sign near it clip at +7: a full step.
    half_steps = {
        QTYPE.Q8_0: 0.5 * absmax / 127,
        QTYPE.Q4_0: absmax / 8,
        QTYPE.Q4_1: 0.5 * value_range / 15,
    }
    bound = half_steps[qtype] + 1e-3 * (absmax + value_range)
    return bound.expand_as(blocks).reshape(w.shape)


def transformers_reference(path: str, model: transformers.PreTrainedModel) -> dict:
    """transformers' own GGUF dequantization and un-permutation of the file at `path`."""
    with torch.device("meta"):
        empty = type(model)(model.config)
    return load_gguf_checkpoint(path, return_tensors=True, model_to_load=empty)["tensors"]


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPDECODE_CACHE", str(tmp_path / "cache"))


def test_hf_dir_yields_exact_state_dict(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    loaded = dict(iter_weights(str(tmp_path)))
    expected = model.state_dict()
    assert set(loaded) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name
    assert load_hf_config(str(tmp_path)).num_key_value_heads == 2


@pytest.mark.parametrize(
    "qtype",
    [QTYPE.F32, QTYPE.F16, QTYPE.BF16, QTYPE.Q8_0, QTYPE.Q4_0, QTYPE.Q4_1],
    ids=lambda qtype: qtype.name,
)
def test_gguf_llama_matches_hf_and_transformers(tmp_path, qtype):
    model = tiny_model()
    path = write_gguf(tmp_path / "tiny.gguf", model, qtype)
    loaded = dict(iter_weights(path))
    expected = hf_tensors(model)
    assert set(loaded) == set(expected)  # rope_freqs skipped, lm_head present
    for name, tensor in expected.items():
        assert loaded[name].dtype == torch.float32
        error = (loaded[name] - tensor).abs()
        assert torch.all(error <= quantization_tolerance(tensor, qtype)), (name, error.max())
    reference = transformers_reference(path, model)
    assert set(reference) == set(loaded)
    for name, tensor in reference.items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_gguf_qwen2_is_not_unpermuted(tmp_path):
    model = tiny_model("qwen2", tie=True)
    path = write_gguf(tmp_path / "qwen.gguf", model, arch="qwen2")
    loaded = dict(iter_weights(path))
    expected = hf_tensors(model)
    assert set(loaded) == set(expected)
    assert "lm_head.weight" not in loaded and "model.layers.1.self_attn.k_proj.bias" in loaded
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name
    reference = transformers_reference(path, model)
    for name, tensor in reference.items():
        assert torch.equal(loaded[name], tensor), name


def test_gguf_config_from_metadata(tmp_path):
    model = tiny_model()
    config = load_hf_config(write_gguf(tmp_path / "tiny.gguf", model))
    assert config.model_type == "llama"
    for key in ("hidden_size", "num_hidden_layers", "num_key_value_heads", "vocab_size"):
        assert getattr(config, key) == getattr(model.config, key), key


def test_unpermute_inverts_llama_cpp_permute():
    w = torch.arange(8 * 16 * 3, dtype=torch.float32).reshape(8 * 16, 3)
    permuted = torch.from_numpy(llama_cpp_permute(w.numpy(), 8, 2))
    assert not torch.equal(permuted, w)
    assert torch.equal(unpermute_rotary_rows(permuted, 2), w)
    bias = torch.arange(64, dtype=torch.float32)
    assert torch.equal(
        unpermute_rotary_rows(torch.from_numpy(llama_cpp_permute(bias.numpy(), 4, 4)), 4), bias
    )
    with pytest.raises(ValueError, match="6 rows"):
        unpermute_rotary_rows(torch.zeros(6, 2), 2)


def test_unknown_tensor_name_is_named(tmp_path):
    extra = {"blk.0.mystery.weight": (np.zeros(4, dtype=np.float32), None)}
    path = write_gguf(tmp_path / "odd.gguf", tiny_model(), extra=extra)
    with pytest.raises(ValueError, match=r"blk\.0\.mystery\.weight"):
        list(iter_weights(path))


def test_unsupported_quantization_is_named(tmp_path):
    # Q8_1 is a real llama.cpp type that gguf-py can write but not dequantize.
    q8_1_bytes = np.zeros(gguf.quant_shape_to_byte_shape((2, 32), QTYPE.Q8_1), dtype=np.uint8)
    extra = {"output_norm.bias": (q8_1_bytes, QTYPE.Q8_1)}
    path = write_gguf(tmp_path / "q81.gguf", tiny_model(), extra=extra)
    with pytest.raises(ValueError, match=r"'output_norm\.bias' in .*q81\.gguf.*Q8_1"):
        list(iter_weights(path))


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "gemma.gguf"
    writer = gguf.GGUFWriter(str(path), "gemma")
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="unsupported GGUF architecture 'gemma'"):
        iter_weights(str(path))


def test_missing_paths_are_named(tmp_path):
    missing = str(tmp_path / "nowhere")
    for load in (iter_weights, load_hf_config, resolve_model_path):
        with pytest.raises(FileNotFoundError, match="model path not found: .*nowhere"):
            load(missing)


def test_dir_without_config_or_safetensors(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} has no config.json"):
        iter_weights(str(tmp_path))
    transformers.LlamaConfig().save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"has no \*\.safetensors files"):
        iter_weights(str(tmp_path))


def test_corrupt_and_truncated_gguf(tmp_path):
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    good = Path(write_gguf(tmp_path / "tiny.gguf", tiny_model()))
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[:-1000])  # cut inside the tensor data
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    for path in (garbage, truncated, empty):
        for load in (iter_weights, load_hf_config, load_tokenizer):
            with pytest.raises(ValueError, match=f"{path} is not a valid GGUF file"):
                load(str(path))


def test_tokenizer_cache_key_follows_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"x")
    first = tokenizer_cache_dir(str(path))
    assert first.parent == tmp_path / "cache" / "tokenizers"
    assert tokenizer_cache_dir(str(path)) == first
    os.utime(path, ns=(0, 123_000_000_000))
    assert tokenizer_cache_dir(str(path)) != first
