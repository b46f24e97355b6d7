"""A quality guard on the shipped skip-aware default: its 2x perplexity on 20 held-out chat
prompts stays below a stated bound, so a regression in the engine's loading, the adapter or the
training forward fails CI (docs/quality.md, "General chat", has the full evaluation)."""

from __future__ import annotations

import math

import pytest
import torch

from skipdecode import datasets
from skipdecode.model_runner.adapter import shipped_adapter_path
from skipdecode.scheduler import SkipConfig
from skipdecode.training.chat import build_prompts
from skipdecode.training.eval_chat import answer_nll
from skipdecode.training.modeling import load_causal_lm, load_training_tokenizer

pytestmark = pytest.mark.slow

NUM_PROMPTS = 20
ANSWER_TOKENS = 64
# Measured on these 20 prompts (2026-12, fp32): the shipped model 6.36 at 1x, 55.0 at 2x, 133.8 at
# 3x; the plain base model 5.51 at 1x and 6,084 at 2x. The bound leaves ~15% for numerical drift
# across CPUs and torch versions, while a real regression (the adapter not merged, the wrong
# layers skipped, a broken training forward) lands orders of magnitude above it.
SHIPPED_2X_BOUND = 63.0


@pytest.fixture(scope="module")
def held_out_prompts():
    tokenizer = load_training_tokenizer(None)
    conversations, _ = datasets.read_conversations("sharegpt")
    firsts = datasets.first_chunks(conversations)
    test_side = datasets.split_conversations(firsts, 2, 4)["test"]
    prompts, _ = build_prompts(tokenizer, test_side, 256, ANSWER_TOKENS, limit=NUM_PROMPTS)
    assert len(prompts) == NUM_PROMPTS
    return prompts


def perplexity(model, prompts, speedup: float) -> float:
    schedule = SkipConfig.for_speedup(speedup).resolve(model.config.num_hidden_layers)
    nll, counts = answer_nll(model, prompts, schedule, batch_size=10)
    return math.exp(sum(nll) / sum(counts))


def test_the_shipped_model_at_2x_stays_below_its_bound(held_out_prompts):
    adapter = shipped_adapter_path()
    assert adapter is not None, "the package must ship the skip-aware adapter"
    model = load_causal_lm(None, torch.device("cpu"), adapter).eval()
    assert perplexity(model, held_out_prompts, 2.0) < SHIPPED_2X_BOUND


def test_the_shipped_adapter_loads_with_full_depth_as_its_default():
    from skipdecode import LLM
    from skipdecode.checkpoint_schedule import SCHEDULE_FILE, load_schedule_record
    from skipdecode.model_runner.adapter import serves_by_default

    llm = LLM(dtype="float32", num_kv_blocks=64, adapter="shipped")
    assert llm.adapter_path == shipped_adapter_path()
    assert llm.default_skip is not None
    assert llm.engine.resolve_skip(llm.default_skip).is_full_depth  # full depth stays the default
    record = load_schedule_record(f"{llm.adapter_path}/{SCHEDULE_FILE}")
    assert {s.speedup for s in record["schedules"]} == {1.0, 2.0, 3.0}
    # Opt-in for now: at full depth it still costs quality (docs/quality.md), so LLM() stays plain.
    assert not serves_by_default(llm.adapter_path)
    assert LLM(dtype="float32", num_kv_blocks=64).adapter_path is None
