"""A quality guard on the shipped skip-aware default: its 2x perplexity on 20 held-out chat
prompts stays below a stated bound, and at 1x it is the base model exactly (the adapter is gated:
it changes only tokens that skip layers), so a regression in the engine's loading, the adapter or
the training forward fails CI (docs/quality.md, "General chat", has the full evaluation)."""

from __future__ import annotations

import math

import pytest
import torch

from skipdecode import datasets
from skipdecode.checkpoint_schedule import read_preset_family
from skipdecode.model_runner.adapter import shipped_adapter_path
from skipdecode.scheduler import SkipConfig
from skipdecode.training.chat import build_prompts
from skipdecode.training.eval_chat import answer_nll
from skipdecode.training.modeling import load_causal_lm, load_training_tokenizer

pytestmark = pytest.mark.slow

NUM_PROMPTS = 20
ANSWER_TOKENS = 64
# Measured on these 20 prompts (2026-12, fp32): the shipped model 5.51 at 1x (the base model's
# figure), 23.5 at 2x, 69.8 at 3x (three warm-up layers, 4,096 chat and 936 copy prompts, one
# epoch); the plain base model 6,084 at 2x. The bound leaves ~15% for numerical drift across CPUs
# and torch versions, while a real regression (the adapter not loaded or not gated, the wrong
# layers skipped, its preset family ignored, a broken training forward) lands far above it.
SHIPPED_2X_BOUND = 27.0


@pytest.fixture(scope="module")
def held_out_prompts():
    tokenizer = load_training_tokenizer(None)
    conversations, _ = datasets.read_conversations("sharegpt")
    firsts = datasets.first_chunks(conversations)
    test_side = datasets.split_conversations(firsts, 2, 4)["test"]
    prompts, _ = build_prompts(tokenizer, test_side, 256, ANSWER_TOKENS, limit=NUM_PROMPTS)
    assert len(prompts) == NUM_PROMPTS
    return prompts


def perplexity(model, prompts, speedup: float, family=None) -> float:
    # The preset as the engine resolves it for this model (the adapter's trained warm-up/decay).
    schedule = SkipConfig.for_speedup(speedup).resolve(model.config.num_hidden_layers, family)
    nll, counts = answer_nll(model, prompts, schedule, batch_size=10)
    return math.exp(sum(nll) / sum(counts))


def test_the_shipped_model_at_2x_stays_below_its_bound_and_is_the_base_at_1x(held_out_prompts):
    adapter = shipped_adapter_path()
    assert adapter is not None, "the package must ship the skip-aware adapter"
    model = load_causal_lm(None, torch.device("cpu"), adapter).eval()
    family = read_preset_family(str(adapter))
    assert perplexity(model, held_out_prompts, 2.0, family) < SHIPPED_2X_BOUND
    # At 1x the adapter computes nothing: five prompts show it (the engine tests check it token
    # for token).
    base = load_causal_lm(None, torch.device("cpu")).eval()
    shipped_1x = perplexity(model, held_out_prompts[:5], 1.0)
    assert shipped_1x == pytest.approx(perplexity(base, held_out_prompts[:5], 1.0), rel=1e-6)


def test_the_default_model_serves_the_shipped_adapter_with_full_depth_by_default():
    from skipdecode import LLM, SamplingParams
    from skipdecode.checkpoint_schedule import SCHEDULE_FILE, load_schedule_record
    from skipdecode.model_runner.adapter import load_adapter, serves_by_default

    llm = LLM(dtype="float32", num_kv_blocks=256)  # adapter="auto"
    assert llm.adapter_path == shipped_adapter_path()
    assert serves_by_default(llm.adapter_path)
    assert load_adapter(llm.adapter_path).apply_to == "skipping"
    assert llm.engine.resolve_skip(llm.default_skip).is_full_depth  # full depth stays the default
    record = load_schedule_record(f"{llm.adapter_path}/{SCHEDULE_FILE}")
    assert {s.speedup for s in record["schedules"]} == {2.0, 3.0}
    # At 1x the default model's text is the plain model's, token for token.
    plain = LLM(dtype="float32", num_kv_blocks=256, adapter=None)
    prompt = "Name three planets of the solar system."
    params = SamplingParams(max_tokens=24, temperature=0)
    ours = llm.generate([prompt], params)[0]
    theirs = plain.generate([prompt], params)[0]
    assert ours.token_ids == theirs.token_ids
    assert ours.text == theirs.text
