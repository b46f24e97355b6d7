"""Prompt logprobs from the engine against Hugging Face transformers' log_softmax (fp32, tiny
random Llama): unchunked, chunked, mixed with skipping requests, after preemption, at 2x."""

from __future__ import annotations

import random

import pytest
import torch
from tiny_models import NUM_LAYERS, VOCAB, load_hf

from skipdecode import LLM, SamplingParams, SkipConfig

TOLERANCE = 1e-4
PROMPTS = [
    [11, 200, 3000, 45, 6, 99, 1234, 5, 7, 7, 7, 42, 17, 8000, 31, 2, 90],
    [5],  # one token: nothing to score, position 0 is None
    [7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 99, 100, 101],
]


def params(prompt_logprobs: int | None, max_tokens: int = 4) -> SamplingParams:
    return SamplingParams(
        temperature=0, max_tokens=max_tokens, ignore_eos=True, prompt_logprobs=prompt_logprobs
    )


@pytest.fixture(scope="module")
def hf(tiny_llama_dir):
    return load_hf(tiny_llama_dir)


def reference(hf, prompt: list[int]) -> torch.Tensor:
    """[len(prompt), vocab] fp32 logprobs: row p - 1 scores prompt token p."""
    with torch.no_grad():
        return hf(torch.tensor([prompt])).logits[0].float().log_softmax(dim=-1)


def assert_matches_reference(hf, prompt: list[int], prompt_logprobs, num_top: int) -> None:
    assert len(prompt_logprobs) == len(prompt)
    assert prompt_logprobs[0] is None
    expected = reference(hf, prompt)
    for position in range(1, len(prompt)):
        entry, row = prompt_logprobs[position], expected[position - 1]
        target = row[prompt[position]].item()
        assert entry.logprob == pytest.approx(target, abs=TOLERANCE)
        # The rank counts tokens rated higher; near-ties within the tolerance may go either way.
        assert int((row > target + TOLERANCE).sum()) + 1 <= entry.rank
        assert entry.rank <= int((row > target - TOLERANCE).sum()) + 1
        assert len(entry.top) == num_top
        top_values = list(entry.top.values())
        assert top_values == pytest.approx(row.topk(num_top).values.tolist(), abs=TOLERANCE)
        for token_id, logprob in entry.top.items():
            assert logprob == pytest.approx(row[token_id].item(), abs=TOLERANCE)


@pytest.mark.parametrize("budget", [2048, 5], ids=["one-step", "chunked"])
def test_prompt_logprobs_equal_transformers(tiny_llama_dir, hf, budget):
    # A budget of 5 tokens per step spreads the long prompts over several prefill chunks.
    llm = LLM(
        str(tiny_llama_dir),
        dtype="float32",
        num_kv_blocks=512,
        block_size=4,
        max_num_batched_tokens=budget,
    )
    outs = llm.generate(PROMPTS, [params(3), params(0), params(20)])
    for prompt, out, num_top in zip(PROMPTS, outs, [3, 0, 20]):
        assert_matches_reference(hf, prompt, out.prompt_logprobs, num_top)


def test_requests_not_asking_get_none_and_cost_no_logits(tiny_llama_dir, monkeypatch):
    llm = LLM(str(tiny_llama_dir), dtype="float32", num_kv_blocks=512, block_size=4)
    model = llm.engine.runner.model
    rows_per_call: list[int] = []
    compute_logits = model.compute_logits

    def counting(hidden: torch.Tensor) -> torch.Tensor:
        rows_per_call.append(hidden.shape[0])
        return compute_logits(hidden)

    monkeypatch.setattr(model, "compute_logits", counting)
    outs = llm.generate(PROMPTS, params(None))
    assert all(out.prompt_logprobs is None for out in outs)
    # Only the sampled rows (one per request) ever reach the LM head.
    assert max(rows_per_call) <= len(PROMPTS)


def test_mixed_with_skipping_decodes_in_the_same_steps(tiny_llama_dir, hf):
    # Short skipping requests decode (at depths below L, so their rows sort after full-depth
    # ones) while the long prompt is prefilled in chunks beside them.
    llm = LLM(
        str(tiny_llama_dir),
        dtype="float32",
        num_kv_blocks=1024,
        block_size=4,
        max_num_batched_tokens=6,
    )
    skip = SkipConfig(max_depth=5, min_depth=3, decay_tokens=4)
    long_prompt = [random.Random(3).randrange(VOCAB) for _ in range(40)]
    prompts = [[1, 2], [3, 4, 5], long_prompt]
    outs = llm.generate(
        prompts, [params(None, 12), params(None, 12), params(2)], skip=[skip, skip, None]
    )
    assert min(outs[0].depths) < NUM_LAYERS
    assert_matches_reference(hf, long_prompt, outs[2].prompt_logprobs, 2)


def test_speedup_2_gives_the_full_depth_prompt_logprobs(tiny_llama_dir):
    llm = LLM(str(tiny_llama_dir), dtype="float32", num_kv_blocks=512, block_size=4)
    full = llm.generate(PROMPTS, params(5, 8), skip=SkipConfig())
    fast = llm.generate(PROMPTS, params(5, 8), skip=SkipConfig.for_speedup(2.0))
    assert any(min(out.depths) < NUM_LAYERS for out in fast)  # the 2x requests did skip
    for a, b in zip(full, fast):
        assert len(a.prompt_logprobs) == len(b.prompt_logprobs)
        for x, y in zip(a.prompt_logprobs[1:], b.prompt_logprobs[1:]):
            assert y.logprob == pytest.approx(x.logprob, abs=1e-5)
            assert y.rank == x.rank
            assert list(y.top) == list(x.top)


def test_preempted_requests_keep_one_entry_per_prompt_token(tiny_llama_dir, hf):
    rng = random.Random(5)
    prompts = [[rng.randrange(VOCAB) for _ in range(rng.randint(20, 30))] for _ in range(6)]
    # 150 blocks of 4 positions: two requests fit at first, then their growth preempts the
    # newest, whose prompt (and generated tokens) are recomputed.
    llm = LLM(str(tiny_llama_dir), dtype="float32", num_kv_blocks=150, block_size=4)
    outs = llm.generate(prompts, params(2, 24))
    assert llm.engine.scheduler.num_preemptions > 0
    for prompt, out in zip(prompts, outs):
        assert_matches_reference(hf, prompt, out.prompt_logprobs, 2)
