"""The CPU weight-packing transform changes speed, never results."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import skipdecode.model_runner.loader as loader
from skipdecode import LLM, SamplingParams
from skipdecode.model_runner.cpu_packing import PackedLinear, can_pack, pack_linears

pytestmark = pytest.mark.skipif(
    not hasattr(torch.ops.mkldnn, "_linear_pointwise"), reason="torch built without oneDNN"
)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 7, 64])
def test_packed_linear_equals_linear_in_bf16(bias, rows):
    linear = nn.Linear(96, 200, bias=bias).to(torch.bfloat16)
    x = torch.randn(2, rows, 96, dtype=torch.bfloat16)
    packed = PackedLinear.from_linear(linear)
    assert torch.equal(packed(x), linear(x))
    assert packed.weight is linear.weight


def test_pack_linears_swaps_every_linear_and_keeps_ties():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10, bias=False)).to(torch.bfloat16)
    model[1].weight = model[0].weight
    assert can_pack(model)
    assert pack_linears(model) == 1
    assert isinstance(model[1], PackedLinear) and model[1].weight is model[0].weight
    assert not can_pack(nn.Linear(4, 4))  # fp32 stays on the plain path


def test_packed_engine_generates_the_same_tokens(tiny_llama_dir, monkeypatch):
    prompts = [[1, 2, 3, 4], [500, 600], list(range(40))]
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    packed = LLM(str(tiny_llama_dir), dtype="bfloat16", num_kv_blocks=256)
    assert isinstance(packed.engine.runner.model.lm_head, PackedLinear)
    monkeypatch.setattr(loader, "can_pack", lambda model: False)
    plain = LLM(str(tiny_llama_dir), dtype="bfloat16", num_kv_blocks=256)
    assert type(plain.engine.runner.model.lm_head) is nn.Linear
    assert [o.token_ids for o in packed.generate(prompts, params)] == [
        o.token_ids for o in plain.generate(prompts, params)
    ]
