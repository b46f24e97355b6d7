"""The CPU weight-packing transform changes speed, never results."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import skipdecode.model_runner.loader as loader
from skipdecode import LLM, SamplingParams
from skipdecode.config import ModelConfig, cpu_has_fast_bf16
from skipdecode.model_runner.cpu_packing import (
    PackedLinear,
    can_pack,
    fuse_projections,
    pack_linears,
)

pytestmark = pytest.mark.skipif(
    not hasattr(torch.ops.mkldnn, "_linear_pointwise"), reason="torch built without oneDNN"
)
# oneDNN refuses to reorder bf16 weights on CPUs without its bf16 path (AVX2 only): the engine
# does not pack there (see test_no_packing_without_the_bf16_path), so these cannot run.
needs_bf16_path = pytest.mark.skipif(
    not cpu_has_fast_bf16(), reason="this CPU has no oneDNN bf16 path; packing is off here"
)


@needs_bf16_path
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 7, 64])
def test_packed_linear_equals_linear_in_bf16(bias, rows):
    linear = nn.Linear(96, 200, bias=bias).to(torch.bfloat16)
    x = torch.randn(2, rows, 96, dtype=torch.bfloat16)
    packed = PackedLinear.from_linear(linear)
    assert torch.equal(packed(x), linear(x))
    assert packed.weight is linear.weight


@needs_bf16_path
def test_pack_linears_swaps_every_linear_and_keeps_ties():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10, bias=False)).to(torch.bfloat16)
    model[1].weight = model[0].weight
    assert can_pack(model)
    assert pack_linears(model) == 1
    assert isinstance(model[1], PackedLinear) and model[1].weight is model[0].weight
    assert not can_pack(nn.Linear(4, 4))  # fp32 stays on the plain path


@needs_bf16_path
def test_packed_engine_generates_the_same_tokens(tiny_llama_dir, monkeypatch):
    prompts = [[1, 2, 3, 4], [500, 600], list(range(40))]
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    packed = LLM(str(tiny_llama_dir), dtype="bfloat16", num_kv_blocks=256)
    assert isinstance(packed.engine.runner.model.lm_head, PackedLinear)
    layer = packed.engine.runner.model.model.layers[0]
    assert isinstance(layer.self_attn.qkv_proj, PackedLinear)
    assert isinstance(layer.mlp.gate_up_proj, PackedLinear)
    assert not hasattr(layer.self_attn, "q_proj") and not hasattr(layer.mlp, "up_proj")
    monkeypatch.setattr(loader, "can_pack", lambda model: False)
    plain = LLM(str(tiny_llama_dir), dtype="bfloat16", num_kv_blocks=256)
    assert type(plain.engine.runner.model.lm_head) is nn.Linear
    assert [o.token_ids for o in packed.generate(prompts, params)] == [
        o.token_ids for o in plain.generate(prompts, params)
    ]


def test_no_packing_without_the_bf16_path(tiny_llama_dir, monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    model = nn.Sequential(nn.Linear(8, 10, bias=False)).to(torch.bfloat16)
    assert not can_pack(model)
    llm = LLM(str(tiny_llama_dir), dtype="bfloat16", num_kv_blocks=256)  # bf16 still works
    assert type(llm.engine.runner.model.lm_head) is nn.Linear
    out = llm.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    assert len(out[0].token_ids) == 4


@pytest.mark.parametrize("native_bf16", [False, True])
def test_auto_dtype_is_fp32_on_a_cpu_without_native_bf16(monkeypatch, native_bf16):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native_bf16)
    expected = torch.bfloat16 if native_bf16 else torch.float32
    assert ModelConfig(device="cpu").torch_dtype == expected
    assert ModelConfig(device="cpu", dtype="bfloat16").torch_dtype == torch.bfloat16  # explicit


class Projections(nn.Module):
    """A module that declares a fused q/k/v slot, like LlamaAttention."""

    def __init__(self, biases=(True, True, True)) -> None:
        super().__init__()
        self.q_proj = nn.Linear(16, 16, bias=biases[0])
        self.k_proj = nn.Linear(16, 8, bias=biases[1])
        self.v_proj = nn.Linear(16, 8, bias=biases[2])
        self.qkv_proj = None


def test_fuse_projections_concatenates_and_removes_the_parts():
    module = Projections()
    x = torch.randn(5, 16)
    expected = [module.q_proj(x), module.k_proj(x), module.v_proj(x)]
    assert fuse_projections(module) == 1
    got = module.qkv_proj(x).split((16, 8, 8), dim=-1)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert not hasattr(module, "q_proj") and not hasattr(module, "v_proj")
    assert fuse_projections(module) == 0  # already fused


def test_fuse_projections_leaves_what_it_cannot_fuse():
    mixed = Projections(biases=(True, False, True))  # one bias shape for all, or none
    assert fuse_projections(mixed) == 0 and mixed.qkv_proj is None
    no_slot = nn.Module()  # projections without a declared fused slot (e.g. OPT) stay
    no_slot.q_proj, no_slot.k_proj, no_slot.v_proj = (nn.Linear(4, 4) for _ in range(3))
    assert fuse_projections(no_slot) == 0 and hasattr(no_slot, "q_proj")
