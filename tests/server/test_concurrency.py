"""Many requests at once: mixed skip schedules in one batch, clients that vanish mid-stream,
and a full queue."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from conftest import ServerProcess, streams_cut_short, tiny_args
from prometheus_client.parser import text_string_to_metric_families

SKIPS = [
    {},
    {"speedup": 1.5},
    {"speedup": 2.0},
    {"warmup_layers": 1, "max_depth": 6, "min_depth": 3, "decay_tokens": 4},
    {"warmup_layers": 2, "max_depth": 7, "min_depth": 5, "decay_tokens": 8},
    {"warmup_layers": 0, "max_depth": 4, "min_depth": 2, "decay_tokens": 2},
    {"max_depth": 5},
    None,  # the server's default
]


def completion_body(i: int, **extra) -> dict:
    body = {
        "model": "tiny",
        "prompt": f"Request number {i} says",
        "max_tokens": 10,
        "temperature": 0,
        "ignore_eos": True,
        **extra,
    }
    if SKIPS[i % len(SKIPS)] is not None:
        body["skip"] = SKIPS[i % len(SKIPS)]
    return body


async def stream_completion(client: httpx.AsyncClient, body: dict) -> tuple[str, str | None]:
    text, reason = "", None
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = httpx.Response(200, content=line[6:]).json()
            for choice in chunk["choices"]:
                text += choice["text"]
                reason = choice["finish_reason"] or reason
    return text, reason


def test_concurrent_streams_with_mixed_skips_match_solo_runs(server, http):
    bodies = [completion_body(i) for i in range(16)]
    alone = []
    for body in bodies:
        response = http.post("/v1/completions", json=body)
        assert response.status_code == 200
        alone.append(response.json()["choices"][0]["text"])

    async def all_at_once():
        async with httpx.AsyncClient(
            base_url=server.url, headers=server.headers, timeout=120
        ) as client:
            return await asyncio.gather(*(stream_completion(client, b) for b in bodies))

    results = asyncio.run(all_at_once())
    assert [reason for _, reason in results] == ["length"] * 16
    assert [text for text, _ in results] == alone
    assert len(set(alone)) > 1  # the schedules really differ


def wait_for_idle(http: httpx.Client, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        stats = http.get("/internal/stats").json()
        idle = {k: stats[k] for k in ("num_running", "num_waiting", "kv_used_blocks")}
        if set(idle.values()) == {0} and stats["num_open_responses"] == 0:
            return stats
        assert time.monotonic() < deadline, f"engine still busy: {stats}"
        time.sleep(0.1)


def num_aborted(http: httpx.Client) -> float:
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            name, reason = sample.name, sample.labels.get("finished_reason")
            if name == "skipdecode:request_success_total" and reason == "abort":
                return sample.value
    raise AssertionError("no skipdecode:request_success_total{finished_reason='abort'}")


@pytest.mark.parametrize("endpoint", ["/v1/completions", "/v1/chat/completions"])
def test_disconnected_streams_free_everything(server, http, endpoint):
    num_streams = 50
    aborted_before = num_aborted(http)
    if endpoint == "/v1/completions":
        body = {"model": "tiny", "prompt": "Keep talking", "max_tokens": 100}
    else:
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "Talk"}],
            "max_tokens": 60,
        }
    body.update(stream=True, ignore_eos=True, temperature=1.0, seed=0)

    assert streams_cut_short(server, endpoint, body, num_streams) == [3] * num_streams
    stats = wait_for_idle(http)
    assert stats["num_unfinished"] == 0
    # They ended by abort, not by running to max_tokens.
    assert num_aborted(http) - aborted_before == num_streams
    follow_up = http.post("/v1/completions", json=completion_body(0))
    assert follow_up.status_code == 200
    assert follow_up.json()["choices"][0]["finish_reason"] == "length"


@pytest.fixture(scope="module")
def one_slot_server(tiny_llama_dir):
    """One running sequence and one waiting slot: the third concurrent request is refused."""
    args = tiny_args(tiny_llama_dir, "--max-queue-len", "1", "--max-num-seqs", "1")
    proc = ServerProcess(args)
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


def test_full_queue_is_503_with_retry_after(one_slot_server):
    body = {"model": "tiny", "prompt": "Busy", "max_tokens": 40, "ignore_eos": True}

    async def flood():
        async with httpx.AsyncClient(
            base_url=one_slot_server.url, headers=one_slot_server.headers, timeout=120
        ) as client:
            return await asyncio.gather(
                *(client.post("/v1/completions", json=body) for _ in range(8))
            )

    responses = asyncio.run(flood())
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 1 and codes.count(503) >= 1, codes
    assert set(codes) == {200, 503}
    for response in responses:
        if response.status_code == 503:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert int(response.headers["Retry-After"]) >= 1
        else:
            assert response.json()["usage"]["completion_tokens"] == 40
    with one_slot_server.http() as http:  # the server recovers once the queue drains
        assert http.post("/v1/completions", json=body).status_code == 200


def test_disconnected_non_streamed_requests_are_aborted(server, http):
    num_requests = 10
    aborted_before = num_aborted(http)
    body = {"model": "tiny", "prompt": "Go on", "max_tokens": 110, "ignore_eos": True, "n": 2}

    async def give_up(client: httpx.AsyncClient) -> None:
        with pytest.raises(httpx.ReadTimeout):  # the client hangs up while the server generates
            await client.post("/v1/completions", json=body, timeout=httpx.Timeout(60, read=0.5))

    async def run():
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers) as client:
            await asyncio.gather(*(give_up(client) for _ in range(num_requests)))

    asyncio.run(run())
    wait_for_idle(http)
    assert num_aborted(http) - aborted_before == 2 * num_requests  # n=2: two engine requests each
