"""SIGTERM: stop taking requests, let in-flight streams finish within the grace period, abort
the rest with a finish reason, exit 0."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
from conftest import ServerProcess, tiny_args

GRACE_S = 3.0
EXIT_MARGIN_S = 5.0  # engine thread join, uvicorn's 0.1 s ticks, interpreter exit


async def read_stream(client: httpx.AsyncClient, body: dict, started: asyncio.Event) -> dict:
    text, reason, num_chunks = "", None, 0
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            assert "choices" in event, event  # an error event instead of a chunk
            choice = event["choices"][0]
            text += choice["text"]
            reason = choice["finish_reason"] or reason
            num_chunks += 1
            if num_chunks == 2:
                started.set()
    return {"text": text, "finish_reason": reason}


def test_sigterm_drains_streams_and_exits_zero(tiny_llama_4k_dir):
    server = ServerProcess(
        tiny_args(tiny_llama_4k_dir, "--shutdown-timeout", str(GRACE_S), "--max-model-len", "4096")
    ).wait_ready()
    short = {"model": "tiny", "prompt": "Short", "max_tokens": 30, "ignore_eos": True}
    endless = {"model": "tiny", "prompt": "Long", "max_tokens": 4000, "ignore_eos": True}
    try:
        with server.http() as http:  # what the short stream must produce
            expected_short = http.post("/v1/completions", json={**short, "temperature": 0}).json()[
                "choices"
            ][0]["text"]

        async def scenario():
            async with httpx.AsyncClient(
                base_url=server.url, headers=server.headers, timeout=60
            ) as client:
                events = [asyncio.Event() for _ in range(3)]
                bodies = [{**short, "temperature": 0}, endless, endless]
                tasks = [
                    asyncio.create_task(read_stream(client, body, event))
                    for body, event in zip(bodies, events)
                ]
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 60)
                server.proc.send_signal(signal.SIGTERM)
                sent_at = time.monotonic()
                await asyncio.sleep(0.5)
                try:  # a new request now is refused (503) or cannot connect at all
                    late = await client.get("/health")
                    assert late.status_code == 503
                except httpx.TransportError:
                    pass
                return await asyncio.gather(*tasks), sent_at

        results, sent_at = asyncio.run(scenario())
        returncode = server.proc.wait(timeout=GRACE_S + 30)
        elapsed = time.monotonic() - sent_at
    finally:
        server.stop()
    assert returncode == 0
    assert elapsed < GRACE_S + EXIT_MARGIN_S
    assert results[0] == {"text": expected_short, "finish_reason": "length"}
    for result in results[1:]:  # cut at the deadline, and told so
        assert result["finish_reason"] == "abort"
        assert result["text"]
