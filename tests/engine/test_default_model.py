"""The default model (SmolLM2-135M-Instruct GGUF) against transformers' own GGUF loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from skipdecode import LLM, SamplingParams, SkipConfig
from skipdecode.model_runner.weights import default_model_path

pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "def fibonacci(n):",
]


@pytest.fixture(scope="module")
def hf_model():
    from transformers import AutoModelForCausalLM

    path = Path(default_model_path())
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, torch_dtype=torch.float32
    )
    return model.eval()


@pytest.fixture(scope="module")
def llm():
    # The plain GGUF (no skip-aware adapter) dequantized to float: what transformers' own
    # GGUF loading gives.
    return LLM(dtype="float32", num_kv_blocks=2048, adapter=None, quantization="none")


def test_greedy_equals_transformers_generate(hf_model, llm):
    tokenizer = llm.tokenizer
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    outs = llm.generate(PROMPTS, params)
    for prompt, out in zip(PROMPTS, outs):
        ids = tokenizer(prompt).input_ids
        assert out.prompt_token_ids == ids
        with torch.no_grad():
            expected = hf_model.generate(
                torch.tensor([ids]), max_new_tokens=32, do_sample=False, eos_token_id=None
            )[0, len(ids) :].tolist()
        assert out.token_ids == expected
        assert out.text == tokenizer.decode(expected, skip_special_tokens=True)


def test_chat_prompt_stops_at_end_of_turn(llm):
    tokenizer = llm.tokenizer
    messages = [{"role": "user", "content": "What is 2 + 2? Answer with one number."}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=40))[0]
    assert out.finish_reason == "stop"
    assert out.token_ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert "4" in out.text
    assert "<|im_end|>" not in out.text


def test_skip_request_reports_depths_and_speedup(llm):
    out = llm.generate(
        PROMPTS[0],
        SamplingParams(temperature=0, max_tokens=32, ignore_eos=True),
        skip=SkipConfig.for_speedup(2.0),
    )[0]
    schedule = SkipConfig.for_speedup(2.0).resolve(30)
    assert out.depths == [schedule.depth(g) for g in range(32)]
    assert out.theoretical_speedup == pytest.approx(30 * 32 / sum(out.depths))
    assert 1.9 <= out.theoretical_speedup <= 2.1
