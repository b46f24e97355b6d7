"""The engine's skip paths against the slow reference, and invariance under batching/preemption."""

from __future__ import annotations

import random

import pytest
from reference import reference_generate
from tiny_models import NUM_LAYERS, load_hf

from skipdecode import LLM, SamplingParams, SkipConfig
from skipdecode.scheduler import DepthSchedule

SCHEDULES = {
    "decay-reaches-min": SkipConfig(max_depth=7, min_depth=3, decay_tokens=6),
    "warmup-2": SkipConfig(warmup_layers=2, max_depth=6, min_depth=4, decay_tokens=10),
    "warmup-3-constant": SkipConfig(warmup_layers=3, max_depth=5, min_depth=5),
    "preset-2x": SkipConfig.for_speedup(2.0, decay_tokens=8),
}


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)


@pytest.fixture(scope="module", params=["llama", "opt"])
def pair(request, tiny_llama_dir, tiny_opt_dir):
    directory = tiny_llama_dir if request.param == "llama" else tiny_opt_dir
    return load_hf(directory), directory


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_engine_matches_reference(pair, name):
    hf, directory = pair
    skip = SCHEDULES[name]
    schedule = skip.resolve(NUM_LAYERS)
    llm = LLM(str(directory), dtype="float32", num_kv_blocks=512, block_size=4)
    prompts = [[11, 200, 3000, 45, 6], [7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 99]]
    outs = llm.generate(prompts, greedy(14), skip=skip)
    for prompt, out in zip(prompts, outs):
        assert out.token_ids == reference_generate(hf, prompt, schedule, 14)
        assert out.depths == [schedule.depth(g) for g in range(14)]
    if name == "decay-reaches-min":
        assert outs[0].depths[-1] == skip.min_depth


def _requests(count: int, seed: int = 1):
    rng = random.Random(seed)
    schedules = [None, *SCHEDULES.values()]
    prompts = [[rng.randrange(49152) for _ in range(rng.randint(1, 40))] for _ in range(count)]
    skips = [schedules[i % len(schedules)] for i in range(count)]
    lengths = [rng.randint(4, 24) for _ in range(count)]
    return prompts, skips, [greedy(n) for n in lengths]


def _solo(directory, prompts, skips, params):
    llm = LLM(str(directory), dtype="float32", num_kv_blocks=512, block_size=4)
    return [llm.generate([p], s, skip=k)[0].token_ids for p, s, k in zip(prompts, params, skips)]


def test_batch_invariance_and_chunked_prefill(pair):
    _, directory = pair
    prompts, skips, params = _requests(16)
    alone = _solo(directory, prompts, skips, params)
    batched = LLM(str(directory), dtype="float32", num_kv_blocks=2048, block_size=4)
    assert [o.token_ids for o in batched.generate(prompts, params, skip=skips)] == alone
    # A budget of 5 tokens per step forces every long prompt into several prefill chunks.
    tiny_budget = LLM(
        str(directory), dtype="float32", num_kv_blocks=2048, block_size=4, max_num_batched_tokens=5
    )
    assert [o.token_ids for o in tiny_budget.generate(prompts, params, skip=skips)] == alone


def test_preemption_reproduces_outputs(pair):
    _, directory = pair
    prompts, skips, params = _requests(12, seed=2)
    alone = _solo(directory, prompts, skips, params)
    # 140 blocks of 4 positions: the longest request fits alone, a few fit together.
    small = LLM(str(directory), dtype="float32", num_kv_blocks=140, block_size=4)
    outs = small.generate(prompts, params, skip=skips)
    assert small.engine.scheduler.num_preemptions > 0
    assert [o.token_ids for o in outs] == alone
    assert small.engine.kv_cache.num_free_blocks == 140


def _blocks_after(directory, skip, num_tokens: int) -> int:
    llm = LLM(str(directory), dtype="float32", num_kv_blocks=4096, block_size=16)
    engine = llm.engine
    engine.add_request([5, 6, 7, 8], greedy(num_tokens + 1), skip=skip, request_id="r")
    held = 0
    while engine.has_unfinished_requests():
        engine.step()
        held = max(held, engine.kv_cache.num_held_blocks("r"))
    assert engine.kv_cache.num_free_blocks == 4096  # everything back once finished
    return held


def test_kv_blocks_shrink_with_the_schedule(tiny_llama_dir):
    skip = SkipConfig(max_depth=4, min_depth=2, decay_tokens=171)  # ~3x over 256 tokens
    schedule = skip.resolve(NUM_LAYERS)
    assert 2.85 <= schedule.theoretical_speedup(256) <= 3.15
    full = _blocks_after(tiny_llama_dir, None, 256)
    skipped = _blocks_after(tiny_llama_dir, skip, 256)
    assert skipped <= 0.45 * full


def test_abort_returns_blocks(tiny_llama_dir):
    llm = LLM(str(tiny_llama_dir), dtype="float32", num_kv_blocks=256, block_size=4)
    engine = llm.engine
    for i in range(4):
        engine.add_request([1, 2, 3, 4, 5], greedy(50), request_id=f"r{i}")
    for _ in range(5):
        engine.step()
    assert engine.kv_cache.num_free_blocks < 256
    for i in range(4):
        out = engine.abort_request(f"r{i}")
        assert out.finish_reason == "abort"
    assert engine.kv_cache.num_free_blocks == 256
    assert not engine.has_unfinished_requests()
    assert engine.step() == []


def test_depth_schedule_full_is_default(tiny_llama_dir):
    llm = LLM(str(tiny_llama_dir), dtype="float32", num_kv_blocks=128, block_size=4)
    out = llm.generate([[1, 2, 3]], greedy(5))[0]
    assert out.depths == [NUM_LAYERS] * 5
    assert out.theoretical_speedup == 1.0
    assert DepthSchedule.full(NUM_LAYERS).is_full_depth
