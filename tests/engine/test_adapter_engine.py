"""An adapter merged at load: the engine serves the merged model, with the adapter's schedule."""

from __future__ import annotations

import argparse
import re
import shutil

import pytest
import torch
from adapter_helpers import lora_tensors, merged_model_dir, write_adapter
from safetensors.torch import load_file

from skipdecode import LLM, SamplingParams, SkipConfig
from skipdecode.benchmarks import engine_args as bench_args
from skipdecode.checkpoint_schedule import write_skip_schedule
from skipdecode.cli_args import add_engine_args, engine_config
from skipdecode.config import ModelConfig
from skipdecode.loading import load_model, resolve_adapter
from skipdecode.model_runner import adapter as adapter_module

PROMPTS = ["The quick brown fox", [5, 17, 300, 2048, 9, 9, 41]]
GREEDY = SamplingParams(max_tokens=12, temperature=0.0, logprobs=5, ignore_eos=True)


def _llm(model, adapter="auto", **kwargs) -> LLM:
    return LLM(
        str(model), dtype="float32", adapter=adapter, num_kv_blocks=128, block_size=4, **kwargs
    )


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    return write_adapter(tmp_path_factory.mktemp("adapter") / "a", lora_tensors())


@pytest.fixture(scope="module")
def merged_dir(tmp_path_factory, tiny_llama_dir):
    return merged_model_dir(tiny_llama_dir, tmp_path_factory.mktemp("merged") / "m", lora_tensors())


def test_engine_with_adapter_equals_engine_on_weights_merged_by_the_test(
    tiny_llama_dir, adapter_dir, merged_dir
):
    with_adapter = load_model(
        ModelConfig(model=str(tiny_llama_dir), adapter=str(adapter_dir), dtype="float32")
    )
    reference = load_model(ModelConfig(model=str(merged_dir), adapter=None, dtype="float32"))
    assert with_adapter.adapter_path == str(adapter_dir) and reference.adapter_path is None
    ours = dict(with_adapter.model.named_parameters())
    for name, param in reference.model.named_parameters():
        torch.testing.assert_close(ours[name], param, rtol=0, atol=1e-5, msg=name)

    outs = _llm(tiny_llama_dir, str(adapter_dir)).generate(PROMPTS, GREEDY)
    refs = _llm(merged_dir, None).generate(PROMPTS, GREEDY)
    plain = _llm(tiny_llama_dir, None).generate(PROMPTS, GREEDY)
    for out, ref in zip(outs, refs):
        assert out.token_ids == ref.token_ids
        for got, want in zip(out.logprobs, ref.logprobs):
            assert got.logprob == pytest.approx(want.logprob, abs=1e-4)
    # The adapter is large enough that the plain model decodes differently (else the above
    # would not show that the adapter was merged at all).
    assert [o.token_ids for o in plain] != [o.token_ids for o in outs]


def test_adapter_none_loads_the_plain_model(tiny_llama_dir):
    plain = load_model(ModelConfig(model=str(tiny_llama_dir), adapter="none", dtype="float32"))
    assert plain.adapter_path is None
    stored = load_file(str(tiny_llama_dir / "model.safetensors"))
    params = dict(plain.model.named_parameters())
    assert torch.equal(params["model.norm.weight"], stored["model.norm.weight"])


def test_adapter_schedule_becomes_the_default_skip(tiny_llama_dir, tmp_path):
    directory = write_adapter(tmp_path / "a", lora_tensors())
    trained = SkipConfig(warmup_layers=1, max_depth=6, min_depth=3, decay_tokens=9)
    write_skip_schedule(directory, trained, [trained, SkipConfig()])
    llm = _llm(tiny_llama_dir, str(directory))
    assert llm.adapter_path == str(directory)
    assert llm.default_skip == trained
    out = llm.generate([[5, 6, 7, 8]], SamplingParams(max_tokens=10, ignore_eos=True))[0]
    # D(g) = clamp(round(6 - 3 * g / 9), 3, 6), from the paper's formula (no .5 ties here).
    assert out.depths == [max(3, min(6, round(6 - 3 * g / 9))) for g in range(10)]
    # An explicit skip still wins over the adapter's schedule.
    assert _llm(tiny_llama_dir, str(directory), skip=SkipConfig()).default_skip == SkipConfig()


def test_model_schedule_is_kept_when_the_adapter_has_none(tiny_llama_dir, adapter_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)
    own = SkipConfig(max_depth=5, min_depth=3)
    write_skip_schedule(model, own, [own])
    loaded = load_model(ModelConfig(model=str(model), adapter=str(adapter_dir), dtype="float32"))
    assert loaded.default_skip == own


def test_adapter_schedule_that_does_not_fit_the_model(tiny_llama_dir, tmp_path):
    directory = write_adapter(tmp_path / "a", lora_tensors())
    too_deep = SkipConfig(max_depth=30, min_depth=20)  # the tiny model has 8 layers
    file = write_skip_schedule(directory, too_deep, [too_deep])
    config = ModelConfig(model=str(tiny_llama_dir), adapter=str(directory))
    with pytest.raises(ValueError, match=re.escape(f"skip schedule file {file}")):
        load_model(config)


def test_missing_adapter_path_is_a_clear_error_at_load(tiny_llama_dir, tmp_path):
    config = ModelConfig(model=str(tiny_llama_dir), adapter=str(tmp_path / "gone"))
    with pytest.raises(ValueError, match=re.escape(f"adapter directory not found: {tmp_path}")):
        load_model(config)


# ---- ModelConfig.adapter and its resolution -----------------------------------------------


@pytest.mark.parametrize("bad", ["", 3, b"path"])
def test_model_config_rejects_bad_adapter_values(bad):
    with pytest.raises(ValueError, match="ModelConfig.adapter"):
        ModelConfig(adapter=bad)


def test_dummy_weights_take_no_explicit_adapter():
    with pytest.raises(ValueError, match="dummy"):
        ModelConfig(model="m", load_format="dummy", adapter="/some/adapter")


def test_auto_means_the_shipped_adapter_for_the_default_model_only(tmp_path, monkeypatch):
    monkeypatch.setattr(adapter_module, "SHIPPED_ADAPTER_DIR", tmp_path)
    assert resolve_adapter(ModelConfig()) is None  # the folder holds no weights yet
    with pytest.raises(ValueError, match="no shipped adapter"):
        resolve_adapter(ModelConfig(adapter="shipped"))
    write_adapter(tmp_path, lora_tensors())  # not marked to serve by default: opt-in only
    assert resolve_adapter(ModelConfig()) is None
    assert resolve_adapter(ModelConfig(adapter="shipped")) == str(tmp_path)
    write_adapter(tmp_path, lora_tensors(), serve_by_default=True)
    assert resolve_adapter(ModelConfig()) == str(tmp_path)
    assert resolve_adapter(ModelConfig(model="/some/model", adapter="shipped")) == str(tmp_path)
    assert resolve_adapter(ModelConfig(model="/some/model")) is None
    assert resolve_adapter(ModelConfig(load_format="dummy")) is None
    assert resolve_adapter(ModelConfig(adapter=None)) is None
    assert resolve_adapter(ModelConfig(adapter="none")) is None
    assert resolve_adapter(ModelConfig(model="/m", adapter="/x")) == "/x"


# ---- CLI flags ----------------------------------------------------------------------------


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    return parser.parse_args(list(argv))


def test_cli_adapter_flags():
    assert engine_config(_parse()).model.adapter == "auto"
    assert engine_config(_parse("--adapter", "/a/b")).model.adapter == "/a/b"
    assert engine_config(_parse("--no-adapter")).model.adapter == "none"
    with pytest.raises(SystemExit):
        _parse("--adapter", "/a/b", "--no-adapter")


def test_bench_adapter_flags():
    parser = argparse.ArgumentParser()
    bench_args.add_engine_args(parser)
    assert bench_args.model_config(parser.parse_args([])).adapter == "auto"
    assert bench_args.model_config(parser.parse_args(["--no-adapter"])).adapter == "none"
    assert bench_args.model_config(parser.parse_args(["--adapter", "/x"])).adapter == "/x"


@pytest.mark.slow
def test_default_model_gets_the_shipped_adapter_and_its_schedule(tmp_path, monkeypatch):
    """The GGUF path: the adapter is merged into the dequantized float32 tensors."""
    from skipdecode.model_runner.weights import default_model_path, iter_weights

    name = "model.layers.2.self_attn.q_proj"  # SmolLM2-135M: hidden 576
    generator = torch.Generator().manual_seed(3)
    a, b = torch.randn(8, 576, generator=generator), torch.randn(576, 8, generator=generator)
    write_adapter(
        tmp_path, {f"{name}.lora_A": a, f"{name}.lora_B": b}, rank=8, alpha=4.0,
        serve_by_default=True,
    )  # fmt: skip
    trained = SkipConfig(max_depth=18, min_depth=12)
    write_skip_schedule(tmp_path, trained, [trained])
    monkeypatch.setattr(adapter_module, "SHIPPED_ADAPTER_DIR", tmp_path)

    loaded = load_model(ModelConfig(dtype="float32"))
    assert loaded.adapter_path == str(tmp_path) and loaded.default_skip == trained
    base = next(t for n, t in iter_weights(default_model_path()) if n == f"{name}.weight")
    expected = base.double() + 0.5 * b.double() @ a.double()
    merged = dict(loaded.model.named_parameters())[f"{name}.weight"]
    torch.testing.assert_close(merged.double(), expected, rtol=0, atol=1e-5)
    plain = load_model(ModelConfig(dtype="float32", adapter=None, quantization="none"))
    assert plain.adapter_path is None and plain.default_skip is None
    assert torch.equal(dict(plain.model.named_parameters())[f"{name}.weight"], base)
