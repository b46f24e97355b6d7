"""Disconnect storms: waves of streaming requests, each cut at a random point (before the
answer, or after a random number of events); afterwards nothing runs, waits or holds a KV
block, and a normal request gives the same text as before the storm."""

from __future__ import annotations

import asyncio
import random

import httpx
from reliability_helpers import metric_value, stress_or, wait_for_idle

NUM_STREAMS = stress_or(500, 5000)
WAVE = 50  # streams in flight at once
SKIPS = [None, {}, {"speedup": 2.0}, {"warmup_layers": 1, "max_depth": 4, "min_depth": 2}]
REFERENCE = {"model": "tiny", "prompt": "After the storm", "max_tokens": 12, "temperature": 0}


def storm_body(rng: random.Random) -> tuple[str, dict]:
    """A stream that cannot finish before it is cut (24 tokens, at most 13 events read)."""
    body = {
        "model": "tiny",
        "max_tokens": 24,
        "ignore_eos": True,
        "stream": True,
        "temperature": rng.choice([0.0, 1.0]),
        "n": rng.choice([1, 1, 2]),
    }
    if rng.random() < 0.5:
        path, body["prompt"] = "/v1/completions", f"Storm {rng.randint(0, 99)} says"
    else:
        path, body["messages"] = (
            "/v1/chat/completions",
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Storm"},
            ],
        )
    skip = rng.choice(SKIPS)
    if skip is not None:
        body["skip"] = skip
    return path, body


async def cut_stream(client: httpx.AsyncClient, rng: random.Random) -> str:
    """One stream, abandoned at a random point; returns where it was cut."""
    path, body = storm_body(rng)
    if rng.random() < 0.25:  # hang up within 0-50 ms: while sending, queued or prefilling
        try:
            await asyncio.wait_for(_read(client, path, body, None), rng.uniform(0.0, 0.05))
        except asyncio.TimeoutError:
            return "early"
        return "finished"  # (counted: must stay rare)
    await _read(client, path, body, rng.randint(0, 12))
    return "mid-stream"


async def _read(client: httpx.AsyncClient, path: str, body: dict, num_events: int | None) -> None:
    async with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200, await response.aread()
        seen = 0
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                assert line != "data: [DONE]", "a storm stream finished before its cut"
                seen += 1
                if num_events is not None and seen > num_events:
                    return  # leaving the block closes the connection mid-stream


def test_disconnect_storm_leaves_nothing_behind(small_server, small_http):
    expected = small_http.post("/v1/completions", json=REFERENCE).json()["choices"][0]["text"]
    aborted_before = metric_value(
        small_http, "skipdecode:request_success_total", finished_reason="abort"
    )
    rng = random.Random(0)

    async def storm() -> list[str]:
        limits = httpx.Limits(max_connections=WAVE)
        async with httpx.AsyncClient(
            base_url=small_server.url, headers=small_server.headers, timeout=60, limits=limits
        ) as client:
            cuts = []
            for _ in range(NUM_STREAMS // WAVE):
                wave = [cut_stream(client, random.Random(rng.random())) for _ in range(WAVE)]
                cuts += await asyncio.gather(*wave)
            return cuts

    cuts = asyncio.run(storm())
    stats = wait_for_idle(small_http)
    aborted = metric_value(small_http, "skipdecode:request_success_total", finished_reason="abort")
    print(f"\n{len(cuts)} streams cut: {dict((c, cuts.count(c)) for c in set(cuts))};"
          f" {aborted - aborted_before:.0f} engine requests aborted; after: {stats}")  # fmt: skip
    assert len(cuts) == NUM_STREAMS and cuts.count("mid-stream") > NUM_STREAMS // 2
    assert cuts.count("finished") == 0
    assert stats["kv_used_blocks"] == 0 and stats["num_unfinished"] == 0
    # Every stream cut mid-stream had reached the engine and was aborted there.
    assert aborted - aborted_before >= cuts.count("mid-stream")
    after = small_http.post("/v1/completions", json=REFERENCE)
    assert after.status_code == 200 and after.json()["choices"][0]["text"] == expected
