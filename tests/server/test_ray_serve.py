"""Two replicas on a real local Ray cluster behind Ray Serve's proxy (``serve --replicas 2``):
the API is the single process's, requests spread, killed replicas are replaced, nothing leaks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import threading
import time

import httpx
import pytest
from conftest import DEFAULT_SKIP, ServerProcess, streams_cut_short, tiny_args

from skipdecode.benchmarks.failover import requests_by_replica

MESSAGES = [{"role": "user", "content": "Name three colours."}]
SKIP = {"speedup": 2}


@pytest.fixture(scope="module")
def ray_server(tiny_llama_dir):
    """Ray Serve, two replicas of the shared server's configuration (same default schedule)."""
    skip_flags = [f"--{k.replace('_', '-')}={v}" for k, v in DEFAULT_SKIP.items()]
    proc = ServerProcess(tiny_args(tiny_llama_dir, *skip_flags, "--replicas", "2"))
    try:
        proc.wait_ready()
        wait_for(lambda: len(replica_stats(proc)) == 2, "both replicas reporting")
        yield proc
    finally:
        stop_gracefully(proc)


def stop_gracefully(proc: ServerProcess) -> None:
    """SIGTERM lets the command stop Serve and its local Ray cluster; kill is the backstop."""
    if proc.proc.poll() is None:
        proc.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.proc.wait(timeout=90)
    proc.stop()


def wait_for(predicate, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def replica_stats(proc: ServerProcess) -> dict[str, dict]:
    response = httpx.get(f"{proc.url}/internal/stats", headers=proc.headers, timeout=30)
    return response.json()["replicas"] if response.status_code == 200 else {}


def successes_by_replica(proc: ServerProcess) -> dict[str, float]:
    return requests_by_replica(httpx.get(f"{proc.url}/metrics", timeout=30).text)


def settled_successes(proc: ServerProcess) -> dict[str, float]:
    """The counters once every replica has reported what it served: two reads more than a
    report period (0.5 s) apart agree. A request served just before may land a report late."""
    previous = successes_by_replica(proc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(1.2)
        current = successes_by_replica(proc)
        if current == previous:
            return current
        previous = current
    raise AssertionError("the replicas' request counters never settled")


def all_idle(proc: ServerProcess) -> dict[str, dict] | None:
    stats = replica_stats(proc)
    busy = [
        s for s in stats.values() if s["num_running"] or s["kv_used_blocks"] or s["num_unfinished"]
    ]
    return stats if stats and not busy else None


def test_openai_sdk_matches_the_single_process(ray_server, server):
    ours, theirs = ray_server.openai_client(), server.openai_client()
    for client_kwargs in ({}, {"extra_body": {"skip": SKIP}}):
        chat = [
            c.chat.completions.create(
                model="tiny", messages=MESSAGES, max_tokens=12, temperature=0, **client_kwargs
            )
            for c in (ours, theirs)
        ]
        assert chat[0].choices[0].message.content == chat[1].choices[0].message.content
        assert chat[0].usage.model_dump() == chat[1].usage.model_dump()  # skip fields included
        completions = [
            c.completions.create(
                model="tiny", prompt="Once upon", max_tokens=12, temperature=0, **client_kwargs
            )
            for c in (ours, theirs)
        ]
        assert completions[0].choices[0].text == completions[1].choices[0].text
        assert completions[0].usage.model_dump() == completions[1].usage.model_dump()
    streams = [
        c.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=12, stream=True, temperature=0
        )
        for c in (ours, theirs)
    ]
    pieces = [[chunk.choices[0].delta.content for chunk in s if chunk.choices] for s in streams]
    assert len([p for p in pieces[0] if p]) > 1  # token by token through the proxy
    assert pieces[0] == pieces[1]


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        ("/v1/completions", {"model": "tiny", "prompt": "hi"}, {"Authorization": "Bearer no"}),
        ("/v1/completions", {"model": "gpt-4", "prompt": "hi"}, None),
        ("/v1/chat/completions", {"model": "tiny", "messages": MESSAGES, "top_p": 2}, None),
        ("/v1/completions", {"model": "tiny", "prompt": "hi", "skip": {"speedup": 0.5}}, None),
        ("/v1/completions", {"model": "tiny", "prompt": "x" * (5 * 1024 * 1024)}, None),
    ],
)
def test_error_bodies_match_the_single_process(ray_server, server, path, body, headers):
    responses = [
        httpx.post(p.url + path, json=body, headers=headers or p.headers, timeout=60)
        for p in (ray_server, server)
    ]
    assert responses[0].status_code == responses[1].status_code >= 400
    assert responses[0].json() == responses[1].json()


def test_concurrent_requests_spread_over_both_replicas(ray_server):
    before = settled_successes(ray_server)

    async def run() -> list[int]:
        client = ray_server.async_openai_client()
        calls = [
            client.completions.create(model="tiny", prompt=f"Item {i}", max_tokens=16)
            for i in range(32)
        ]
        return [len(r.choices[0].text) for r in await asyncio.gather(*calls)]

    assert len(asyncio.run(run())) == 32
    after = settled_successes(ray_server)
    served = {r: after.get(r, 0) - before.get(r, 0) for r in replica_stats(ray_server)}
    assert len(served) == 2 and all(n > 0 for n in served.values()), served
    assert sum(served.values()) == 32


def test_streams_cut_through_the_proxy_free_every_replica(ray_server):
    body = {"model": "tiny", "prompt": "Keep talking", "max_tokens": 100, "stream": True}
    body.update(ignore_eos=True, temperature=1.0, seed=0)

    assert streams_cut_short(ray_server, "/v1/completions", body, 40) == [3] * 40
    stats = wait_for(lambda: all_idle(ray_server), "every replica idle", timeout=60)
    assert len(stats) == 2
    assert all(s["num_open_responses"] == 0 for s in stats.values())


def test_a_killed_replica_fails_its_requests_and_is_replaced(ray_server):
    before = replica_stats(ray_server)
    victim, victim_stats = next(iter(before.items()))
    outcomes: list[str] = []
    stop = threading.Event()

    def load() -> None:  # back-to-back requests until told to stop; each must end
        with httpx.Client(base_url=ray_server.url, headers=ray_server.headers, timeout=60) as c:
            while not stop.is_set():
                body = {"model": "tiny", "prompt": "Go", "max_tokens": 64, "ignore_eos": True}
                try:
                    ok = c.post("/v1/completions", json=body).status_code == 200
                    outcomes.append("ok" if ok else "error")
                except httpx.TimeoutException:
                    outcomes.append("hang")
                except httpx.TransportError:
                    outcomes.append("error")

    workers = [threading.Thread(target=load) for _ in range(6)]
    for worker in workers:
        worker.start()
    time.sleep(2.0)
    os.kill(victim_stats["pid"], signal.SIGKILL)
    killed_at, before_kill = time.monotonic(), len(outcomes)
    time.sleep(6.0)
    stop.set()
    for worker in workers:
        worker.join(timeout=90)
    assert not any(worker.is_alive() for worker in workers)
    assert "hang" not in outcomes
    after_kill = outcomes[before_kill:]
    assert after_kill.count("error") <= len(workers), after_kill  # at most those in flight
    assert after_kill[-len(workers) :].count("ok") == len(workers)  # new requests succeed

    def replaced() -> dict | None:
        stats = replica_stats(ray_server)
        return stats if len(stats) == 2 and victim not in stats else None

    stats = wait_for(replaced, "a replacement replica", timeout=180)
    print(f"replica replaced after {time.monotonic() - killed_at:.1f} s")
    (newcomer,) = set(stats) - set(before)
    with ray_server.http() as http:
        for i in range(40):  # the power-of-two router soon sends the idle newcomer work
            body = {"model": "tiny", "prompt": f"Again {i}", "max_tokens": 4}
            assert http.post("/v1/completions", json=body).status_code == 200
            time.sleep(0.6)
            if successes_by_replica(ray_server).get(newcomer, 0) > 0:
                break
    assert successes_by_replica(ray_server).get(newcomer, 0) > 0
    idle = wait_for(lambda: all_idle(ray_server), "every replica idle", timeout=60)
    assert all(s["kv_used_blocks"] == 0 for s in idle.values())  # no leak on the survivor


def test_sigterm_lets_a_streaming_request_finish(ray_server):
    """The last test of the module: it stops the server."""
    body = {"model": "tiny", "prompt": "Last", "max_tokens": 100, "stream": True}
    body.update(ignore_eos=True, stream_options={"include_usage": True})
    lines = []
    with (
        ray_server.http() as http,
        http.stream("POST", "/v1/completions", json=body) as response,
    ):
        for line in response.iter_lines():
            if line.startswith("data: ") and not lines:
                ray_server.proc.send_signal(signal.SIGTERM)  # mid-stream
            lines.append(line)
    assert lines[-2:] == ["data: [DONE]", ""] or lines[-1] == "data: [DONE]"
    usage = json.loads(next(line for line in reversed(lines) if '"usage"' in line)[6:])["usage"]
    assert usage["completion_tokens"] == 100
    assert ray_server.proc.wait(timeout=90) == 0
