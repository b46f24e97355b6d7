"""Determinism under load: greedy requests with random skip settings, submitted together into a
KV pool so small that sequences get preempted and recomputed, give exactly the text and the
layer counts each request gets when it runs alone (DESIGN.md §3: recompute at the original
depths)."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest
from reliability_helpers import ServerProcess, metric_value, stress_or, tiny_args, wait_for_idle

NUM_REQUESTS = stress_or(32, 128)
# fp32 tiny Llama: a 16-position block of one layer holds 2 x 16 x 2 x 16 x 4 B = 4 KiB, so
# 0.0005 GiB is 131 blocks: about five of these requests at full depth, far fewer than 32.
KV_CACHE_GIB = "0.0005"
SKIPS = [
    None,  # the server's default: full depth
    {},
    {"speedup": 1.5},
    {"speedup": 2.0},
    {"warmup_layers": 1, "max_depth": 6, "min_depth": 3, "decay_tokens": 4},
    {"warmup_layers": 0, "max_depth": 4, "min_depth": 2, "decay_tokens": 2},
    {"warmup_layers": 2, "max_depth": 7, "min_depth": 5, "decay_tokens": 12},
]


@pytest.fixture(scope="module")
def tight_server(tiny_llama_dir):
    args = tiny_args(tiny_llama_dir, "--kv-cache-memory", KV_CACHE_GIB, "--max-num-seqs", "64")
    proc = ServerProcess(args)
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


def bodies() -> list[tuple[str, dict]]:
    rng = random.Random(7)
    out = []
    for i in range(NUM_REQUESTS):
        body = {"model": "tiny", "max_tokens": rng.randint(20, 40), "temperature": 0}
        body["ignore_eos"] = True
        skip = rng.choice(SKIPS)
        if skip is not None:
            body["skip"] = skip
        if i % 4 == 3:
            body["messages"] = [{"role": "user", "content": f"Question {i}?"}]
            out.append(("/v1/chat/completions", body))
        else:
            words = " ".join(rng.choice(["sea", "sky", "red", "old", "ship"]) for _ in range(8))
            out.append(("/v1/completions", {**body, "prompt": f"{i}: {words}"}))
    return out


def answer(response: httpx.Response) -> tuple[str, int, int]:
    """(text, completion tokens, layers computed) of a non-streamed response."""
    assert response.status_code == 200, response.text
    data = response.json()
    choice = data["choices"][0]
    text = choice["text"] if "text" in choice else choice["message"]["content"]
    return text, data["usage"]["completion_tokens"], data["usage"]["layers_computed"]


def test_greedy_outputs_survive_preemption(tight_server):
    requests = bodies()
    with tight_server.http() as http:
        alone = [answer(http.post(path, json=body)) for path, body in requests]
        preempted_before = metric_value(http, "skipdecode:num_preemptions_total")

        async def together():
            limits = httpx.Limits(max_connections=NUM_REQUESTS)
            async with httpx.AsyncClient(
                base_url=tight_server.url, headers=tight_server.headers, timeout=300, limits=limits
            ) as client:
                return await asyncio.gather(*(client.post(p, json=b) for p, b in requests))

        loaded = [answer(response) for response in asyncio.run(together())]
        num_preemptions = metric_value(http, "skipdecode:num_preemptions_total") - preempted_before
        stats = wait_for_idle(http)
    print(f"\n{NUM_REQUESTS} requests together: {num_preemptions:.0f} preemptions"
          f" in a pool of {stats['kv_total_blocks']} blocks")  # fmt: skip
    assert num_preemptions > 0
    assert len({text for text, _, _ in alone}) > NUM_REQUESTS // 2  # they really differ
    for i, (solo, batched) in enumerate(zip(alone, loaded)):
        assert batched == solo, f"request {i} ({requests[i][1].get('skip')}) changed under load"
