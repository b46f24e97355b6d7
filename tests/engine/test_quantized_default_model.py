"""The default model (SmolLM2-135M-Instruct GGUF) quantized: int8 serves the shipped gated
adapter, and the logprob cost of int8, int4 and the GGUF blocks as stored, against fp32 float
(run with -s to print the figures docs/quality.md reports under "Quantization")."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from skipdecode import LLM, SamplingParams, SkipConfig
from skipdecode.model_runner.adapter import shipped_adapter_path
from skipdecode.model_runner.gated_adapter import GatedLoRALinear
from skipdecode.model_runner.quant_linear import Int4Linear, Int8Linear

pytestmark = pytest.mark.slow

TEXTS = [
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It"
    " is named after the engineer Gustave Eiffel, whose company designed and built the tower from"
    " 1887 to 1889.",
    "def binary_search(items, target):\n    low, high = 0, len(items) - 1\n    while low <= high:"
    "\n        mid = (low + high) // 2\n        if items[mid] == target:\n            return mid\n"
    "        if items[mid] < target:\n            low = mid + 1\n        else:\n"
    "            high = mid - 1\n    return -1\n",
    "Photosynthesis is the process by which green plants and some other organisms use sunlight to"
    " synthesize foods from carbon dioxide and water. It generally involves the green pigment"
    " chlorophyll and generates oxygen as a byproduct.",
    "To make a cup of tea, boil fresh water, warm the pot, add one teaspoon of leaves per cup,"
    " pour the water over the leaves and let it steep for three to five minutes before serving.",
    "<|im_start|>user\nWhat are three good habits for staying healthy?<|im_end|>\n<|im_start|>"
    "assistant\nEat plenty of vegetables, sleep seven to eight hours a night, and walk or"
    " exercise every day.<|im_end|>",
    "In 1969, Apollo 11 carried Neil Armstrong, Buzz Aldrin and Michael Collins to the Moon."
    " Armstrong and Aldrin landed in the lunar module Eagle while Collins stayed in orbit aboard"
    " Columbia.",
]
# Loose bounds, about twice the figures measured on these texts (docs/quality.md: bf16 0.0330,
# GGUF as stored 0.0305, int8 0.0719, int4 0.0480 with its 8-bit head), far below what a broken
# path gives (a wrong scale or row order puts the mean above 1 nat).
# (bf16 rounding alone, "none"/"bfloat16", measures 0.0330: the scale of the others; not rerun
# here, to keep the suite's time.)
CASES = [
    ("auto", "bfloat16", 0.1),  # the GGUF blocks as stored: the same weights, in bf16
    ("int8", "bfloat16", 0.2),
    ("int4", "bfloat16", 0.15),
]


def prompt_logprobs(llm: LLM) -> torch.Tensor:
    """Each text token's logprob given the ones before it, all texts concatenated."""
    params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0)
    outs = llm.generate(TEXTS, params)
    return torch.cat([torch.tensor([lp.logprob for lp in o.prompt_logprobs[1:]]) for o in outs])


@pytest.fixture(scope="module")
def reference() -> torch.Tensor:
    return prompt_logprobs(
        LLM(dtype="float32", quantization="none", adapter=None, num_kv_blocks=1024)
    )


@pytest.mark.parametrize(("quantization", "dtype", "bound"), CASES)
def test_mean_logprob_difference_against_fp32_float(reference, quantization, dtype, bound):
    llm = LLM(dtype=dtype, quantization=quantization, adapter=None, num_kv_blocks=1024)
    assert llm.quantization == {"auto": "gguf"}.get(quantization, quantization)
    delta = (prompt_logprobs(llm) - reference).abs().mean().item()
    print(f"{quantization}/{dtype}: mean |delta logprob| {delta:.4f} ({len(reference)} tokens)")
    assert delta < bound


def test_int8_serves_the_shipped_gated_adapter():
    llm = LLM(quantization="int8", num_kv_blocks=256)  # dtype and adapter: the defaults
    assert llm.adapter_path == shipped_adapter_path() and llm.quantization == "int8"
    model = llm.engine.runner.model
    assert not [m for m in model.modules() if isinstance(m, nn.Linear)]
    mlp = model.model.layers[15].mlp
    assert isinstance(mlp.gate_up_proj, GatedLoRALinear)
    assert isinstance(mlp.gate_up_proj.base, Int8Linear)
    assert isinstance(model.lm_head, Int8Linear)
    assert isinstance(model.model.embed_tokens.weight, nn.Parameter)  # the lookup stays float
    plain = LLM(quantization="int8", adapter=None, num_kv_blocks=256)
    conversation = [{"role": "user", "content": "Name three planets of the solar system."}]
    params = SamplingParams(max_tokens=24, temperature=0)
    ours, theirs = llm.chat(conversation, params)[0], plain.chat(conversation, params)[0]
    assert ours.token_ids == theirs.token_ids  # 1x: the int8 base model, token for token
    skip = SkipConfig.for_speedup(2.0)
    ours, theirs = (
        llm.chat(conversation, params, skip)[0],
        plain.chat(conversation, params, skip)[0],
    )
    assert ours.theoretical_speedup > 1.5 and ours.text.strip()
    assert ours.token_ids != theirs.token_ids  # 2x: the adapter is at work


def test_int4_group_64_loads_the_default_model():
    llm = LLM(
        dtype="bfloat16",
        quantization="int4",
        quantization_group_size=64,
        adapter=None,
        num_kv_blocks=256,
    )
    model = llm.engine.runner.model
    mlp = model.model.layers[0].mlp
    assert isinstance(mlp.down_proj, Int4Linear) and mlp.down_proj.group_size == 64
    assert isinstance(model.lm_head, Int8Linear)  # the head keeps 8 bits under int4
    out = llm.generate("The capital of France is", SamplingParams(max_tokens=8, temperature=0))
    assert "Paris" in out[0].text
