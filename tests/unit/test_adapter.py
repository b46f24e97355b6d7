"""model_runner/adapter.py: the adapter format, the merge into streamed weights, save_adapter,
and the shipped adapter's location."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from adapter_helpers import ALPHA, RANK, TARGETS, lora_tensors, reference_merge, write_adapter
from safetensors.torch import load_file, save_file
from tiny_models import save_tiny

from skipdecode.model_runner import adapter as adapter_module
from skipdecode.model_runner.adapter import (
    load_adapter,
    merge_weights,
    save_adapter,
    shipped_adapter_path,
)
from skipdecode.model_runner.weights import iter_weights


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny float32 Llama checkpoint (no tokenizer needed here)."""
    return save_tiny("llama", tmp_path_factory.mktemp("base"))


@pytest.fixture()
def adapter_dir(tmp_path):
    return write_adapter(tmp_path / "adapter", lora_tensors())


def test_merged_weights_are_base_plus_scaled_b_a(base_dir, adapter_dir):
    base = load_file(str(base_dir / "model.safetensors"))
    tensors = lora_tensors()
    expected = reference_merge(base, tensors, ALPHA / RANK)
    merged = dict(merge_weights(iter_weights(str(base_dir)), load_adapter(adapter_dir)))
    assert merged.keys() == base.keys()
    for name, tensor in merged.items():
        assert tensor.dtype == base[name].dtype
        if name in expected:
            torch.testing.assert_close(tensor.double(), expected[name], rtol=0, atol=1e-5)
            assert not torch.equal(tensor, base[name])
        else:
            assert torch.equal(tensor, base[name]), name
    assert set(expected) == {f"{p}.weight" for p, _, _ in TARGETS} | {"model.norm.weight"}


def test_bf16_tensors_are_merged_in_float32_and_stay_bf16(base_dir, adapter_dir):
    base = {
        n: t.to(torch.bfloat16) for n, t in load_file(str(base_dir / "model.safetensors")).items()
    }
    merged = dict(merge_weights(base.items(), load_adapter(adapter_dir)))
    expected = reference_merge(base, lora_tensors(), ALPHA / RANK)
    prefix = TARGETS[0][0]
    tensor = merged[f"{prefix}.weight"]
    assert tensor.dtype == torch.bfloat16
    # One rounding of the exact sum to bf16: at most half a bf16 ulp (2**-8 relative) away.
    exact = expected[f"{prefix}.weight"]
    assert ((tensor.double() - exact).abs() <= exact.abs() * 2**-8 + 1e-30).all()


def test_adapter_fields_and_scale(adapter_dir):
    adapter = load_adapter(adapter_dir)
    assert (adapter.rank, adapter.alpha, adapter.scale) == (4, 8.0, 2.0)
    assert adapter.base_model == "tiny-llama"
    assert sorted(adapter.lora) == sorted(f"{p}.weight" for p, _, _ in TARGETS)
    assert list(adapter.replacements) == ["model.norm.weight"]


# ---- bad adapters -------------------------------------------------------------------------


def _edit_config(directory, **changes):
    file = directory / "adapter_config.json"
    config = json.loads(file.read_text())
    config.update(changes)
    file.write_text(json.dumps(config))


def test_missing_files_are_named(tmp_path, adapter_dir):
    with pytest.raises(ValueError, match="adapter directory not found"):
        load_adapter(tmp_path / "nowhere")
    (adapter_dir / "adapter.safetensors").unlink()
    with pytest.raises(ValueError, match=re.escape(str(adapter_dir / "adapter.safetensors"))):
        load_adapter(adapter_dir)
    other = write_adapter(tmp_path / "other", lora_tensors())
    (other / "adapter_config.json").unlink()
    with pytest.raises(ValueError, match=re.escape(str(other / "adapter_config.json"))):
        load_adapter(other)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"format": "peft"}, "expected format 'skipdecode-lora' version 1"),
        ({"version": 2}, "expected format 'skipdecode-lora' version 1"),
        ({"rank": 0}, "'rank' must be a positive integer"),
        ({"rank": True}, "'rank' must be a positive integer"),
        ({"alpha": "8"}, "'alpha' must be a number"),
    ],
)
def test_bad_config_is_named(adapter_dir, changes, problem):
    _edit_config(adapter_dir, **changes)
    file = adapter_dir / "adapter_config.json"
    with pytest.raises(ValueError, match=re.escape(f"invalid adapter file {file}: {problem}")):
        load_adapter(adapter_dir)


def test_config_that_is_not_json(adapter_dir):
    (adapter_dir / "adapter_config.json").write_text("{rank: 4")
    with pytest.raises(ValueError, match="invalid adapter file .*adapter_config.json"):
        load_adapter(adapter_dir)


def test_a_without_b(tmp_path):
    tensors = lora_tensors()
    del tensors["model.layers.3.self_attn.k_proj.lora_B"]
    directory = write_adapter(tmp_path / "a", tensors)
    with pytest.raises(ValueError, match=r"model\.layers\.3\.self_attn\.k_proj\.lora_B is missing"):
        load_adapter(directory)


def test_rank_that_disagrees_with_the_config(tmp_path):
    directory = write_adapter(tmp_path / "a", lora_tensors(), rank=8)
    with pytest.raises(ValueError, match="do not have the configured rank 8"):
        load_adapter(directory)


def test_shape_mismatch_with_the_checkpoint(base_dir, tmp_path):
    tensors = lora_tensors()
    # q_proj is 64 x 64; an A with 65 columns makes a 64 x 65 update.
    tensors["model.layers.0.self_attn.q_proj.lora_A"] = torch.randn(RANK, 65)
    adapter = load_adapter(write_adapter(tmp_path / "a", tensors))
    with pytest.raises(ValueError, match=r"q_proj\.weight is \(64, 64\).*makes \(64, 65\)"):
        list(merge_weights(iter_weights(str(base_dir)), adapter))
    replaced = lora_tensors()
    replaced["model.norm.weight"] = torch.ones(63)
    adapter = load_adapter(write_adapter(tmp_path / "b", replaced))
    with pytest.raises(ValueError, match=r"model\.norm\.weight has shape \(63,\)"):
        list(merge_weights(iter_weights(str(base_dir)), adapter))


def test_target_the_checkpoint_never_yields(base_dir, tmp_path):
    tensors = lora_tensors()
    tensors["model.layers.99.self_attn.q_proj.lora_A"] = torch.randn(RANK, 64)
    tensors["model.layers.99.self_attn.q_proj.lora_B"] = torch.randn(64, RANK)
    adapter = load_adapter(write_adapter(tmp_path / "a", tensors))
    with pytest.raises(ValueError, match=r"1 tensor\(s\) .*model\.layers\.99\.self_attn\.q_proj"):
        list(merge_weights(iter_weights(str(base_dir)), adapter))


def test_weights_file_that_is_not_safetensors(adapter_dir):
    (adapter_dir / "adapter.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="invalid adapter file .*adapter.safetensors"):
        load_adapter(adapter_dir)


# ---- save_adapter -------------------------------------------------------------------------


def test_save_adapter_writes_the_format(tmp_path):
    tensors = lora_tensors()
    directory = save_adapter(
        tmp_path / "out", tensors, RANK, ALPHA, "SmolLM2-135M-Instruct.Q4_1.gguf", {"steps": 10}
    )
    # Read back with plain safetensors/json, not with load_adapter.
    stored = load_file(str(directory / "adapter.safetensors"))
    assert stored.keys() == tensors.keys()
    assert all(torch.equal(stored[n], tensors[n]) for n in tensors)
    config = json.loads((directory / "adapter_config.json").read_text())
    assert config == {
        "format": "skipdecode-lora",
        "version": 1,
        "rank": 4,
        "alpha": 8.0,
        "base_model": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "target_modules": ["down_proj", "k_proj", "q_proj"],
        "steps": 10,
    }


def test_save_adapter_refuses_what_load_adapter_would(tmp_path):
    tensors = lora_tensors()
    del tensors["model.layers.0.self_attn.q_proj.lora_A"]
    with pytest.raises(ValueError, match=r"q_proj\.lora_A is missing"):
        save_adapter(tmp_path / "a", tensors, RANK, ALPHA, None)
    with pytest.raises(ValueError, match="extra must not set"):
        save_adapter(tmp_path / "b", lora_tensors(), RANK, ALPHA, None, {"rank": 2})


# ---- the shipped adapter -----------------------------------------------------------------


def test_shipped_adapter_path_needs_the_weights_file(tmp_path, monkeypatch):
    folder = tmp_path / "smollm2-135m-skip"
    folder.mkdir()
    (folder / "README.md").write_text("weights arrive later")
    monkeypatch.setattr(adapter_module, "SHIPPED_ADAPTER_DIR", folder)
    assert shipped_adapter_path() is None
    save_file({"x.lora_A": torch.zeros(1, 2)}, str(folder / "adapter.safetensors"))
    assert shipped_adapter_path() == str(folder)


def test_shipped_folder_is_package_data_of_skipdecode():
    import skipdecode

    expected = Path(skipdecode.__file__).resolve().parent / "adapters" / "smollm2-135m-skip"
    assert expected == adapter_module.SHIPPED_ADAPTER_DIR
    assert (expected / "README.md").is_file()
