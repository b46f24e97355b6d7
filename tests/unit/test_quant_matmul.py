"""Quantized linears against a dequantize-then-matmul reference in fp32, and the quantizers'
error bounds, odd shapes, group boundaries and refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from skipdecode.config import ModelConfig
from skipdecode.model_runner.cpu_packing import fuse_projections
from skipdecode.model_runner.quant import (
    QuantizedWeight,
    quantize_int4,
    quantize_int8,
    quantize_weight,
)
from skipdecode.model_runner.quant_linear import (
    Int4Linear,
    Int8Linear,
    quantize_model,
    quantized_linear,
)

# (N, K): multiples of 16/32, and shapes the int4 kernel refuses as they are (N not a multiple
# of 16, K not a multiple of the group), which the module pads.
SHAPES = [(64, 128), (7, 5), (33, 40), (48, 96), (576, 576), (20, 300)]


def reference(x: torch.Tensor, qweight: QuantizedWeight, bias: torch.Tensor | None):
    out = x.double() @ qweight.dequantize().double().T
    return out if bias is None else out + bias.double()


def assert_matches(out: torch.Tensor, expected: torch.Tensor) -> None:
    # fp32 sums in another order: relative to the size of the terms, not of the result.
    scale = expected.abs().max().item() + 1.0
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=2e-6 * scale)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("has_bias", [False, True])
def test_int8_linear_matches_the_dequantized_reference(shape, has_bias):
    generator = torch.Generator().manual_seed(0)
    n, k = shape
    weight = torch.randn(n, k, generator=generator)
    bias = torch.randn(n, generator=generator) if has_bias else None
    qweight = quantize_int8(weight, torch.float32)
    # Symmetric per channel: every value within half a step of its row's scale.
    assert qweight.scales.shape == (n, 1)
    error = (qweight.dequantize() - weight).abs()
    assert (error <= qweight.scales / 2 + 1e-6).all()
    module = quantized_linear(qweight, bias, torch.float32)
    assert isinstance(module, Int8Linear)
    x = torch.randn(3, 5, k, generator=generator)  # leading dims are kept
    out = module(x)
    assert out.shape == (3, 5, n)
    assert_matches(out.reshape(15, n), reference(x.reshape(15, k), qweight, bias))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
def test_int4_linear_matches_the_dequantized_reference(shape, group_size):
    generator = torch.Generator().manual_seed(1)
    n, k = shape
    weight = torch.randn(n, k, generator=generator)
    bias = torch.randn(n, generator=generator)
    qweight = quantize_int4(weight, group_size, torch.float32)
    assert qweight.shape == (n, k)  # K padded to whole groups inside, not outside
    num_groups = -(-k // group_size)
    assert qweight.codes.shape == (n, num_groups * group_size)
    # Asymmetric per group: every value within half a step of its group's scale.
    steps = qweight.scales.repeat_interleave(group_size, dim=1)[:, :k]
    assert ((qweight.dequantize() - weight).abs() <= steps / 2 + 1e-5).all()
    module = quantized_linear(qweight, bias, torch.float32)
    assert isinstance(module, Int4Linear)
    x = torch.randn(9, k, generator=generator)
    assert_matches(module(x), reference(x, qweight, bias))


def test_group_boundaries_keep_each_groups_own_scale():
    # Adjacent groups 1000x apart: a scale leaking across a boundary would wreck the small one.
    generator = torch.Generator().manual_seed(2)
    weight = torch.randn(32, 128, generator=generator)
    weight[:, 32:64] *= 1000.0
    weight[:, 96:] *= 1e-3
    qweight = quantize_int4(weight, 32, torch.float32)
    for group in range(4):
        cols = slice(32 * group, 32 * (group + 1))
        span = weight[:, cols].amax(dim=1) - weight[:, cols].amin(dim=1)  # [N]
        error = (qweight.dequantize()[:, cols] - weight[:, cols]).abs().amax(dim=1)
        assert (error <= span / 30 * 1.001 + 1e-9).all()
    # Hand-made codes with a distinct scale and zero per (row, group): the kernel's values,
    # read back through an identity input, are exactly the formula's.
    codes = torch.randint(0, 16, (48, 128), dtype=torch.uint8, generator=generator)
    scales = torch.arange(1, 48 * 4 + 1, dtype=torch.float32).reshape(48, 4) / 64
    zeros = -torch.arange(48 * 4, dtype=torch.float32).reshape(48, 4) / 32
    handmade = QuantizedWeight(codes, scales, zeros, 32)
    module = quantized_linear(handmade, None, torch.float32)
    assert torch.equal(module(torch.eye(128)).T, handmade.dequantize())


def test_grouped_int8_runs_exactly_on_the_int4_kernel():
    # GGUF Q8_0's form: int8 codes (the extremes included) with an fp16 scale per 32 columns.
    generator = torch.Generator().manual_seed(3)
    codes = torch.randint(-128, 128, (40, 96), dtype=torch.int8, generator=generator)
    codes[0, :2] = torch.tensor([-128, 127], dtype=torch.int8)
    scales = torch.rand(40, 3, generator=generator).half().float()
    qweight = QuantizedWeight(codes, scales, None, 32)
    module = quantized_linear(qweight, None, torch.float32)
    assert isinstance(module, Int4Linear) and module.num_input_copies == 2
    assert torch.equal(module(torch.eye(96)).T, qweight.dequantize())
    x = torch.randn(5, 96, generator=generator)
    assert_matches(module(x), reference(x, qweight, None))


@pytest.mark.parametrize("shape", [(64, 128), (7, 5), (33, 17), (20, 300)])
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_bf16_activations_stay_close_to_the_reference(mode, shape):
    # bf16 is the kernels' vectorized path (aligned vector loads of 8 or 16 input columns): odd
    # K, and an input that starts mid-row of a larger buffer, must still read right.
    generator = torch.Generator().manual_seed(4)
    n, k = shape
    weight = torch.randn(n, k, generator=generator)
    qweight = quantize_weight(weight, mode, 32, torch.bfloat16)
    assert qweight.scales.dtype == torch.bfloat16  # codes fit the rounded scales
    module = quantized_linear(qweight, None, torch.bfloat16)
    buffer = torch.randn(6 * k + 1, generator=generator).bfloat16()
    x = buffer[1:].view(6, k)  # storage offset of one element: not aligned
    out = module(x)
    assert out.dtype == torch.bfloat16
    expected = reference(x.float(), qweight, None)
    torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=2e-2 * expected.std())


def test_bad_group_sizes_and_dtypes_name_the_field():
    weight = torch.randn(32, 64)
    with pytest.raises(ValueError, match="quantization_group_size must be one of 32, 64"):
        quantize_int4(weight, 16, torch.float32)
    with pytest.raises(ValueError, match="quantization dtype must be one of float32"):
        quantize_int8(weight, torch.float64)
    with pytest.raises(ValueError, match="2-D float weight"):
        quantize_int8(weight.to(torch.int32), torch.float32)
    with pytest.raises(ValueError, match="quantization must be int8 or int4"):
        quantize_weight(weight, "int2", 32, torch.float32)
    with pytest.raises(ValueError, match="QuantizedWeight.codes of int4 must be torch.uint8"):
        QuantizedWeight(
            torch.zeros(4, 32, dtype=torch.int8), torch.ones(4, 1), torch.ones(4, 1), 32
        )
    with pytest.raises(ValueError, match="group_size 48 does not divide K = 64"):
        QuantizedWeight(torch.zeros(4, 64, dtype=torch.int8), torch.ones(4, 1), None, 48)
    with pytest.raises(ValueError, match=r"ModelConfig.quantization_group_size must be one of"):
        ModelConfig(quantization="int4", quantization_group_size=100)
    with pytest.raises(ValueError, match=r"ModelConfig.quantization must be one of auto, none"):
        ModelConfig(quantization="fp8")
    with pytest.raises(ValueError, match=r"quantization='int4' runs on CPU only"):
        ModelConfig(quantization="int4", device="cuda")


class TinyLM(nn.Module):
    """Just enough structure: an embedding tied to the head, an attention with q/k/v."""

    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(100, 64)
        self.attn = nn.Module()
        for name, size in (("q_proj", 64), ("k_proj", 32), ("v_proj", 32)):
            setattr(self.attn, name, nn.Linear(64, size, bias=True))
        self.attn.qkv_proj = None  # declares the fusion (cpu_packing.FUSIONS)
        self.lm_head = nn.Linear(64, 100, bias=False)
        self.lm_head.weight = self.embed_tokens.weight


def test_quantize_model_swaps_fused_projections_and_the_tied_head_but_not_the_embedding():
    model = TinyLM()
    embedding = model.embed_tokens.weight.detach().clone()
    x = torch.randn(3, 64)
    parts = [model.attn.q_proj, model.attn.k_proj, model.attn.v_proj]
    expected_qkv = torch.cat([p(x) for p in parts], dim=-1).detach()
    assert fuse_projections(model) == 1
    assert quantize_model(model, "int8", 32) == 2  # qkv_proj and lm_head
    assert isinstance(model.attn.qkv_proj, Int8Linear) and isinstance(model.lm_head, Int8Linear)
    assert torch.equal(model.embed_tokens.weight, embedding)  # the lookup stays float
    torch.testing.assert_close(model.attn.qkv_proj(x), expected_qkv, atol=0.05, rtol=0)


def test_int4_keeps_the_head_at_8_bits():
    model = TinyLM()
    fuse_projections(model)
    assert quantize_model(model, "int4", 32) == 2
    assert isinstance(model.attn.qkv_proj, Int4Linear) and isinstance(model.lm_head, Int8Linear)


def test_fusing_stacks_stored_blocks_and_leaves_a_mix_unfused():
    def stored_for(model, names):
        return {
            f"attn.{n}.weight": quantize_int4(getattr(model.attn, n).weight, 32, torch.float32)
            for n in names
        }

    model = TinyLM()
    stored = stored_for(model, ["q_proj", "k_proj", "v_proj"])
    parts = [stored[f"attn.{n}.weight"] for n in ("q_proj", "k_proj", "v_proj")]
    assert fuse_projections(model, stored) == 1
    assert list(stored) == ["attn.qkv_proj.weight"]
    assert torch.equal(stored["attn.qkv_proj.weight"].codes, torch.cat([p.codes for p in parts]))
    mixed = TinyLM()
    stored = stored_for(mixed, ["q_proj", "k_proj"])  # v_proj float
    assert fuse_projections(mixed, stored) == 0
    assert mixed.attn.qkv_proj is None and len(stored) == 2


def test_the_flags_reach_the_model_config():
    import argparse

    from skipdecode import cli_args
    from skipdecode.benchmarks import engine_args

    for add, to_config in (
        (cli_args.add_engine_args, lambda args: cli_args.engine_config(args).model),
        (engine_args.add_engine_args, engine_args.model_config),
    ):
        parser = argparse.ArgumentParser()
        add(parser)
        assert to_config(parser.parse_args([])).quantization == "auto"
        args = parser.parse_args(["--quantization", "int4", "--quantization-group-size", "64"])
        config = to_config(args)
        assert (config.quantization, config.quantization_group_size) == ("int4", 64)
        with pytest.raises(SystemExit):
            parser.parse_args(["--quantization-group-size", "48"])
