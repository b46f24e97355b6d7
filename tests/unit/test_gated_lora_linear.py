"""GatedLoRALinear's update against a float64 reference, on both of its matmul paths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from skipdecode.model_runner.gated_adapter import (
    FP32_UPDATE_ROWS,
    AdapterGate,
    GatedLoRALinear,
)
from skipdecode.model_runner.loader import merges_gated
from skipdecode.model_runner.lora_merge import merged_linear
from skipdecode.model_runner.quant import quantize_weight
from skipdecode.model_runner.quant_linear import Int8Linear, quantized_linear

IN, OUT, RANK = 40, 24, 6


def make_linear(dtype: torch.dtype, rows_of_layer) -> tuple[GatedLoRALinear, nn.Linear]:
    torch.manual_seed(0)
    base = nn.Linear(IN, OUT, bias=True).to(dtype)
    lora_a = torch.randn(RANK, IN).to(dtype)
    lora_b = torch.randn(OUT, RANK).to(dtype)
    gate = AdapterGate(num_layers=1, device=torch.device("cpu"))
    gate.layer_rows = [rows_of_layer]
    return GatedLoRALinear(base, lora_a, lora_b, layer=0, gate=gate), base


def reference(module: GatedLoRALinear, base: nn.Linear, x: torch.Tensor, gated: list[int]):
    """base(x) in the model dtype; the gated rows add (x A^T) B^T computed in float64."""
    out = base(x).double()
    update = x.double() @ module.lora_a.double().t() @ module.lora_b.double().t()
    out[gated] += update[gated]
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_rows", [1, FP32_UPDATE_ROWS, FP32_UPDATE_ROWS + 1, 9])
def test_a_tail_of_gated_rows_gets_the_update_and_the_rest_stays_base(dtype, num_rows):
    first_gated = 2
    module, base = make_linear(dtype, first_gated)
    x = torch.randn(first_gated + num_rows, IN).to(dtype)
    out = module(x)
    assert out.dtype == dtype
    # Full-depth rows: the base linear exactly.
    assert torch.equal(out[:first_gated], base(x)[:first_gated])
    want = reference(module, base, x, list(range(first_gated, first_gated + num_rows)))
    # One rounding of the sum to the model dtype (bf16: 8 bits of mantissa), no more.
    tolerance = 1e-5 if dtype == torch.float32 else 2**-7
    scale = want.abs().max()
    assert (out.double() - want).abs().max() <= tolerance * scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_indexed_gated_rows(dtype):
    gated = [0, 3, 4]
    module, base = make_linear(dtype, torch.tensor(gated))
    x = torch.randn(6, IN).to(dtype)
    out = module(x)
    plain = [i for i in range(6) if i not in gated]
    assert torch.equal(out[plain], base(x)[plain])
    want = reference(module, base, x, gated)
    tolerance = 1e-5 if dtype == torch.float32 else 2**-7
    assert (out.double() - want).abs().max() <= tolerance * want.abs().max()


def test_few_rows_of_a_bf16_model_use_fp32_factors_and_fp32_models_need_none():
    bf16, _ = make_linear(torch.bfloat16, 0)
    assert bf16.a_t32.dtype == torch.float32 and bf16.b_t32.dtype == torch.float32
    assert torch.equal(bf16.a_t32, bf16.lora_a.float().t())
    fp32, _ = make_linear(torch.float32, 0)
    assert fp32.a_t32 is None and fp32.b_t32 is None


def test_no_gated_rows_is_the_base_linear():
    module, base = make_linear(torch.bfloat16, None)
    x = torch.randn(3, IN).to(torch.bfloat16)
    assert torch.equal(module(x), base(x))


def quantized_base(mode: str, dtype: torch.dtype) -> tuple[nn.Module, torch.Tensor]:
    """A quantized linear and the float32 weight its grid approximates."""
    torch.manual_seed(1)
    weight = torch.randn(OUT, IN)
    return quantized_linear(quantize_weight(weight, mode, 32, dtype), None, dtype), weight


def test_merging_into_a_float_linear_adds_b_times_a_to_the_weight():
    module, base = make_linear(torch.float32, 0)
    merged = merged_linear(base, module.lora_a, module.lora_b)
    want = base.weight.double() + module.lora_b.double() @ module.lora_a.double()
    assert (merged.weight.double() - want).abs().max() < 1e-5
    assert torch.equal(merged.bias, base.bias)
    x = torch.randn(3, IN)
    assert (merged(x).double() - reference(module, base, x, [0, 1, 2])).abs().max() < 1e-4


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_merging_into_a_quantized_linear_requantizes_to_per_channel_int8(mode):
    base, _ = quantized_base(mode, torch.float32)
    lora_a, lora_b = torch.randn(RANK, IN) * 0.1, torch.randn(OUT, RANK) * 0.1
    merged = merged_linear(base, lora_a, lora_b)
    assert type(merged) is Int8Linear
    eye = torch.eye(IN)
    base_weight = base(eye).t()  # what the base multiplies with, read back exactly in fp32
    want = base_weight + lora_b @ lora_a
    got = merged(eye).t()
    # Rounded to the int8 grid once: within half a step (the row's max |w| / 127).
    half_step = want.abs().amax(dim=1, keepdim=True) / 127 / 2
    assert ((got - want).abs() <= half_step * 1.01).all()


def test_a_step_where_every_row_skips_runs_the_merged_linear():
    module, base = make_linear(torch.float32, 0)
    module.merge_update()
    x = torch.randn(4, IN)
    assert torch.equal(module(x), module.merged(x))
    assert (module(x).double() - reference(module, base, x, [0, 1, 2, 3])).abs().max() < 1e-4
    # Some rows at full depth: the base for them, bit for bit, and the unmerged update.
    module.gate.layer_rows = [2]
    out = module(x)
    assert torch.equal(out[:2], base(x)[:2])
    # The merged copy lives outside the module tree: no parameters, no state of its own.
    assert not any("merged" in name for name, _ in module.named_modules())
    assert not any("merged" in name for name in module.state_dict())


def test_the_loader_merges_in_reduced_precision_on_cpu_only():
    cpu = torch.device("cpu")
    assert merges_gated(cpu, torch.bfloat16)
    assert not merges_gated(cpu, torch.float32)
