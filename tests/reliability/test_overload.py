"""Overload: a burst far above --max-num-seqs + --max-queue-len. The excess gets fast 503s with
Retry-After in OpenAI's shape, the admitted requests finish in bounded time, and the server's
RSS comes back near where it started."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from reliability_helpers import (
    ServerProcess,
    assert_openai_error,
    rss_bytes,
    stress_or,
    tiny_args,
    wait_for_idle,
)

MAX_NUM_SEQS, MAX_QUEUE_LEN = 4, 8
BURST = stress_or(400, 2000)
NUM_BURSTS = stress_or(1, 5)  # after a first, warm-up burst
MAX_TOKENS = 16
MIB = 1 << 20
MAX_KIB_PER_CONNECTION = 64  # RSS the first burst may keep per simultaneous connection


@pytest.fixture(scope="module")
def busy_server(tiny_llama_dir):
    args = tiny_args(
        tiny_llama_dir, "--max-num-seqs", str(MAX_NUM_SEQS), "--max-queue-len", str(MAX_QUEUE_LEN)
    )
    proc = ServerProcess(args)
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


def body(i: int) -> dict:
    return {
        "model": "tiny",
        "prompt": f"Burst request {i}",
        "max_tokens": MAX_TOKENS,
        "ignore_eos": True,
        "temperature": 0,
        "stream": i % 2 == 1,
    }


async def timed_post(client: httpx.AsyncClient, i: int) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    path = "/v1/completions"
    if body(i)["stream"]:
        async with client.stream("POST", path, json=body(i)) as response:
            await response.aread()
    else:
        response = await client.post(path, json=body(i))
    return response, time.monotonic() - start


def burst(server: ServerProcess) -> list[tuple[httpx.Response, float]]:
    async def all_at_once():
        limits = httpx.Limits(max_connections=BURST)
        async with httpx.AsyncClient(
            base_url=server.url, headers=server.headers, timeout=120, limits=limits
        ) as client:
            return await asyncio.gather(*(timed_post(client, i) for i in range(BURST)))

    return asyncio.run(all_at_once())


class PeakRSS(threading.Thread):
    """Samples a process's RSS until stopped; ``peak`` is the highest seen."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self._stop_event = pid, rss_bytes(pid), threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.05):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


def test_burst_gets_503s_and_memory_returns(busy_server):
    pid = busy_server.proc.pid
    with busy_server.http() as http:
        for i in range(MAX_NUM_SEQS + MAX_QUEUE_LEN):  # warm-up: allocations that stay
            assert http.post("/v1/completions", json=body(2 * i)).status_code == 200
        rss_cold = rss_bytes(pid)
        sampler = PeakRSS(pid)
        sampler.start()
        # The first burst raises the allocator's high-water mark once (connection buffers);
        # later ones must come back to it.
        results = []
        for i in range(1 + NUM_BURSTS):
            results += burst(busy_server)
            wait_for_idle(http)
            time.sleep(1.0)
            if i == 0:
                rss_before = rss_bytes(pid)
        rss_peak = sampler.stop()
        rss_after = rss_bytes(pid)
        follow_up = http.post("/v1/completions", json=body(0))

    refused = sorted(s for r, s in results if r.status_code == 503)
    admitted = sorted(s for r, s in results if r.status_code == 200)
    print(
        f"\n{1 + NUM_BURSTS} bursts of {BURST}: {len(admitted)} admitted, {len(refused)} refused"
        f" (503 after p50 {refused[len(refused) // 2]:.2f}s, max {refused[-1]:.2f}s; admitted"
        f" max {admitted[-1]:.2f}s); RSS cold {rss_cold / MIB:.1f} MiB, after the first burst"
        f" {rss_before / MIB:.1f} MiB, peak {rss_peak / MIB:.1f} MiB, after the others"
        f" {rss_after / MIB:.1f} MiB"
    )
    assert len(admitted) + len(refused) == (1 + NUM_BURSTS) * BURST
    # Requests still in the inbox count as waiting: at least --max-queue-len get in at once.
    assert len(admitted) >= MAX_QUEUE_LEN and len(refused) >= len(results) // 2
    for response, _ in results:
        if response.status_code == 503:
            assert_openai_error(response, 503)
            assert int(response.headers["Retry-After"]) >= 1
        else:  # admitted means served in full (streams included)
            text = response.text
            assert '"completion_tokens":16' in text or text.rstrip().endswith("data: [DONE]")
    # Bounded: the queue never holds more than --max-queue-len, so no one waits long.
    assert refused[-1] < 30.0 and admitted[-1] < 60.0
    assert rss_peak - rss_cold < 200 * MIB
    # The first burst's high-water mark (about 35 KiB per simultaneous connection, kept by the
    # allocators) is bounded; later bursts return to it.
    assert rss_before - rss_cold < BURST * MAX_KIB_PER_CONNECTION * 1024
    assert rss_after <= rss_before * 1.02
    assert follow_up.status_code == 200


def test_full_server_refuses_at_once(busy_server):
    """Once the queue is full, a refusal takes no engine time: each 503 comes back fast."""
    long = {"model": "tiny", "prompt": "Long", "max_tokens": 100, "ignore_eos": True}
    probe = {"model": "tiny", "prompt": "Probe", "max_tokens": 4}

    async def scenario() -> list[float]:
        async with httpx.AsyncClient(
            base_url=busy_server.url, headers=busy_server.headers, timeout=120
        ) as client:
            holders = []
            while True:  # fill the running slots and the queue, until one is refused
                holders.append(asyncio.create_task(client.post("/v1/completions", json=long)))
                await asyncio.sleep(0.02)
                if any(t.done() and t.result().status_code == 503 for t in holders):
                    break
                assert len(holders) < 50, "the queue never filled"
            latencies = []
            for _ in range(20):
                start = time.monotonic()
                response = await client.post("/v1/completions", json=probe)
                latencies.append(time.monotonic() - start)
                assert_openai_error(response, 503)
                assert response.headers["Retry-After"] == "1"
            await asyncio.gather(*holders)
            return sorted(latencies)

    latencies = asyncio.run(scenario())
    print(f"\n503 while full: p50 {latencies[10] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
    assert latencies[10] < 0.25 and latencies[-1] < 1.0
