"""The AsyncEngine: concurrent streams, aborts, and a failing step that does not kill the loop."""

from __future__ import annotations

import asyncio

import pytest

from skipdecode import LLM, SamplingParams
from skipdecode.async_engine import AsyncEngine, StepFailedError


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    return LLM(str(tiny_llama_dir), dtype="float32", num_kv_blocks=512, block_size=8)


def greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)


async def collect(engine: AsyncEngine, prompt, n: int):
    last = None
    async for out in await engine.generate(prompt, greedy(n)):
        last = out
    return last


def test_concurrent_streams_equal_offline_results(llm):
    prompts = [[i + 1, i + 2, i + 3] for i in range(6)]
    expected = [o.token_ids for o in llm.generate(prompts, greedy(8))]

    async def main():
        engine = AsyncEngine(llm.engine)
        engine.start()
        try:
            outs = await asyncio.gather(*(collect(engine, p, 8) for p in prompts))
        finally:
            engine.shutdown()
        return outs

    outs = asyncio.run(main())
    assert [o.token_ids for o in outs] == expected
    assert llm.engine.kv_cache.num_used_blocks == 0


def test_step_failure_fails_its_requests_and_keeps_serving(llm, monkeypatch):
    scheduler = llm.engine.scheduler
    original = scheduler.schedule
    calls = {"n": 0}

    def failing_once():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected failure inside schedule()")
        return original()

    monkeypatch.setattr(scheduler, "schedule", failing_once)

    async def main():
        engine = AsyncEngine(llm.engine)
        engine.start()
        try:
            with pytest.raises(StepFailedError, match="injected"):
                await asyncio.wait_for(collect(engine, [1, 2, 3], 4), timeout=30)
            later = await asyncio.wait_for(collect(engine, [4, 5, 6], 4), timeout=30)
            assert engine.is_running
        finally:
            engine.shutdown()
        return later

    later = asyncio.run(main())
    assert later.finish_reason == "length" and len(later.token_ids) == 4
    assert not llm.engine.has_unfinished_requests()
    assert llm.engine.kv_cache.num_used_blocks == 0


def test_abandoned_stream_is_aborted(llm):
    async def main():
        engine = AsyncEngine(llm.engine)
        engine.start()
        try:
            stream = await engine.generate([9, 9, 9], greedy(200))
            async for _ in stream:
                break  # the client goes away after the first token
            await stream.aclose()
            for _ in range(100):
                if engine.num_unfinished == 0 and not llm.engine.has_unfinished_requests():
                    break
                await asyncio.sleep(0.05)
        finally:
            engine.shutdown()

    asyncio.run(main())
    assert not llm.engine.has_unfinished_requests()
    assert llm.engine.kv_cache.num_used_blocks == 0
