"""SIGTERM during 16 active streams: nothing new gets in, the streams that can finish within
the grace period do (with the text they would have had), the others end with
``finish_reason: "abort"`` and [DONE], and the process exits 0 with no traceback in its log."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
from reliability_helpers import ServerProcess, tiny_args

GRACE_S = 3.0
EXIT_MARGIN_S = 6.0  # engine thread join, uvicorn's ticks, interpreter exit, a loaded machine
NUM_STREAMS = 16
SHORT = {"model": "tiny", "max_tokens": 24, "ignore_eos": True, "temperature": 0}
ENDLESS = {"model": "tiny", "max_tokens": 4000, "ignore_eos": True, "temperature": 0}


def stream_body(i: int) -> dict:
    return {**(SHORT if i % 2 == 0 else ENDLESS), "prompt": f"Stream {i}", "stream": True}


async def read_stream(client: httpx.AsyncClient, i: int, started: asyncio.Event) -> dict:
    text, reasons, events = "", [], []
    async with client.stream("POST", "/v1/completions", json=stream_body(i)) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line[6:])
            if line != "data: [DONE]":
                event = json.loads(line[6:])
                assert "choices" in event, event  # an error event instead of a chunk
                choice = event["choices"][0]
                text += choice["text"]
                reasons.append(choice["finish_reason"])
            if len(events) == 2:
                started.set()
    return {"text": text, "finish_reason": reasons[-1], "last_event": events[-1]}


async def refused(url: str, headers: dict) -> bool:
    """A new request after SIGTERM: refused at the socket, or answered 503."""
    try:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as client:
            response = await client.post("/v1/completions", json={**SHORT, "prompt": "Late"})
    except httpx.TransportError:
        return True
    return response.status_code == 503


def test_sigterm_during_16_streams(tiny_llama_4k_dir):
    args = tiny_args(
        tiny_llama_4k_dir, "--shutdown-timeout", str(GRACE_S), "--max-model-len", "4096"
    )
    server = ServerProcess(args).wait_ready()
    try:
        with server.http() as http:  # what each short stream must produce
            expected = {
                i: http.post("/v1/completions", json={**SHORT, "prompt": f"Stream {i}"}).json()[
                    "choices"
                ][0]["text"]
                for i in range(0, NUM_STREAMS, 2)
            }

        async def scenario():
            limits = httpx.Limits(max_connections=NUM_STREAMS + 2)
            async with httpx.AsyncClient(
                base_url=server.url, headers=server.headers, timeout=60, limits=limits
            ) as client:
                events = [asyncio.Event() for _ in range(NUM_STREAMS)]
                tasks = [
                    asyncio.create_task(read_stream(client, i, e)) for i, e in enumerate(events)
                ]
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 60)
                server.proc.send_signal(signal.SIGTERM)
                sent_at = time.monotonic()
                await asyncio.sleep(0.3)
                was_refused = await refused(server.url, server.headers)
                return await asyncio.gather(*tasks), sent_at, was_refused

        results, sent_at, was_refused = asyncio.run(scenario())
        returncode = server.proc.wait(timeout=GRACE_S + 30)
        elapsed = time.monotonic() - sent_at
        log = server.log_path.read_text()
    finally:
        server.stop()
    print(f"\nexit {returncode} {elapsed:.2f}s after SIGTERM; finish reasons:"
          f" {[r['finish_reason'] for r in results]}")  # fmt: skip
    assert returncode == 0
    assert elapsed < GRACE_S + EXIT_MARGIN_S
    assert was_refused
    for i, result in enumerate(results):
        assert result["last_event"] == "[DONE]"
        if i % 2 == 0:  # short: finished within the grace period, as if nothing happened
            assert result["finish_reason"] == "length"
            assert result["text"] == expected[i]
        else:  # endless: cut at the deadline, and told so
            assert result["finish_reason"] == "abort" and result["text"]
    assert "Traceback" not in log and "Exception" not in log, log[-3000:]
