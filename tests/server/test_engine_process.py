"""The engine in its own process: outputs through the ZMQ path equal the in-process engine's;
aborts free KV blocks; stop strings end requests here and in the core; a dead core fails fast."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import httpx
import psutil
import pytest
import zmq
from conftest import ServerProcess, tiny_args
from prometheus_client.parser import text_string_to_metric_families

from skipdecode.config import CacheConfig, EngineConfig, ModelConfig
from skipdecode.core_protocol import (
    AddRequest,
    Shutdown,
    encoder,
    output_decoder,
)
from skipdecode.engine import Engine
from skipdecode.engine_core import EngineCore
from skipdecode.scheduler import SamplingParams, SkipConfig
from skipdecode.server.core_client import EngineCoreClient

PROMPTS = ["The capital of France is", "Once upon a time", "1, 2, 3,"]
SKIP_2X = SkipConfig(warmup_layers=1, max_depth=7, min_depth=3, decay_tokens=6)


def engine_config(model_dir) -> EngineConfig:
    return EngineConfig(
        model=ModelConfig(model=str(model_dir), dtype="float32", max_model_len=128),
        cache=CacheConfig(num_blocks=256),
    )


async def collect(client: EngineCoreClient, prompt, params, skip=None, request_id=None):
    outputs = [o async for o in await client.generate(prompt, params, skip, request_id)]
    return outputs


async def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def core(tiny_llama_dir):
    """An EngineCoreClient on its own event loop thread (the way the app runs it)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    client = EngineCoreClient(engine_config(tiny_llama_dir), num_threads=1)
    client.start(loop)

    def run(coroutine_fn, *args, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coroutine_fn(client, *args), loop).result(timeout)

    client.run = run
    yield client
    client.shutdown()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


@pytest.mark.parametrize("skip", [None, SKIP_2X], ids=["1x", "2x"])
def test_ipc_outputs_equal_the_in_process_engine(core, tiny_llama_dir, skip):
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, logprobs=2)
    engine = Engine(engine_config(tiny_llama_dir))
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(prompt, params, skip, request_id=f"r{i}")
    expected = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            expected[output.request_id] = output

    async def all_prompts(client):
        results = await asyncio.gather(
            *(collect(client, p, params, skip, f"r{i}") for i, p in enumerate(PROMPTS))
        )
        return {outputs[-1].request_id: outputs for outputs in results}

    got = core.run(all_prompts)
    for request_id, outputs in got.items():
        final, reference = outputs[-1], expected[request_id]
        assert final.token_ids == reference.token_ids
        assert final.text == reference.text
        assert final.depths == reference.depths
        assert final.finish_reason == reference.finish_reason == "length"
        assert final.theoretical_speedup == pytest.approx(reference.theoretical_speedup)
        for got_entry, want in zip(final.logprobs, reference.logprobs, strict=True):
            assert got_entry.top.keys() == want.top.keys()
            assert got_entry.logprob == pytest.approx(want.logprob, abs=1e-5)
        # Streamed: one new token per snapshot, texts growing as prefixes of the final text.
        assert [o.new_token_ids[0] for o in outputs] == reference.token_ids
        assert all(final.text.startswith(o.text) for o in outputs)
    if skip is not None:
        assert min(got["r0"][-1].depths) < 8  # it did skip


def test_abort_through_ipc_frees_the_kv_blocks(core):
    params = SamplingParams(max_tokens=90, temperature=0, ignore_eos=True)

    async def abort_after_three(client):
        iterator = await client.generate("Abort me " * 10, params, None, "long")
        async for output in iterator:
            if len(output.token_ids) == 3:
                break
        await iterator.aclose()  # leaving early aborts, as a client that hung up does
        await wait_for(lambda: client.occupancy()["kv_used_blocks"] == 0)
        return client.occupancy(), client.num_unfinished

    occupancy, unfinished = core.run(abort_after_three)
    assert occupancy["num_running"] == 0 and occupancy["num_waiting"] == 0
    assert unfinished == 0


def test_stop_string_ends_the_request_in_both_processes(core):
    free = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    text = core.run(collect, "Once upon a time", free)[-1].text
    stop = text[4:7]  # a string the greedy answer is known to contain
    assert stop.strip(), text
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True, stop=[stop])

    async def stopped(client):
        outputs = await collect(client, "Once upon a time", params)
        await wait_for(lambda: client.occupancy()["kv_used_blocks"] == 0)
        return outputs[-1]

    final = core.run(stopped)
    assert final.finish_reason == "stop" and final.stop_reason == stop
    assert final.text == text[: text.index(stop)]
    assert len(final.token_ids) < 16


def test_bad_model_fails_start_with_the_reason(tmp_path):
    def live_children() -> set[int]:
        children = psutil.Process().children()
        return {c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE}

    before = live_children()
    client = EngineCoreClient(engine_config(tmp_path / "missing"), num_threads=1)
    with pytest.raises(RuntimeError, match="the engine failed to load"):
        client.start(asyncio.new_event_loop())
    assert live_children() <= before  # the core that failed is gone


def test_core_loop_reports_a_failed_step_and_keeps_serving(tiny_llama_dir):
    engine = Engine(engine_config(tiny_llama_dir))
    real_run = engine.runner.run
    context = zmq.Context()
    inputs, feed = context.socket(zmq.PULL), context.socket(zmq.PUSH)
    outputs, sink = context.socket(zmq.PUSH), context.socket(zmq.PULL)
    inputs.bind("inproc://in"), feed.connect("inproc://in")
    sink.bind("inproc://out"), outputs.connect("inproc://out")
    encode, decode = encoder().encode, output_decoder().decode
    params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
    ids = engine.tokenize("hello")

    def failing_run(scheduled):
        engine.runner.run = real_run  # only the first step fails
        raise RuntimeError("simulated kernel failure")

    engine.runner.run = failing_run
    feed.send(encode(AddRequest("a", ids, params, None)))
    loop = threading.Thread(target=EngineCore(engine, outputs, os.getppid()).run, args=(inputs,))
    loop.start()
    messages = [decode(sink.recv())]
    while not any(d.finish_reason for m in messages for d in m.deltas):
        if len(messages) == 2:
            feed.send(encode(AddRequest("b", ids, params, None)))
        messages.append(decode(sink.recv()))
    feed.send(encode(Shutdown()))
    loop.join(10)
    failures = [f for m in messages for f in m.failures]
    assert [(f.request_ids, f.kind) for f in failures] == [(["a"], "step")]
    assert "simulated kernel failure" in failures[0].message
    finished = [d for m in messages for d in m.deltas if d.finish_reason]
    assert [(d.request_id, d.finish_reason) for d in finished] == [("b", "length")]
    assert engine.kv_cache.num_used_blocks == 0
    for socket in (inputs, feed, outputs, sink):
        socket.close(linger=0)
    context.term()


@pytest.fixture
def process_server(tiny_llama_dir):
    proc = ServerProcess(tiny_args(tiny_llama_dir, "--engine-process"))
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


def test_killed_engine_process_fails_requests_fast_and_health_503(process_server):
    children = psutil.Process(process_server.proc.pid).children()
    # Besides the core, multiprocessing's resource tracker runs as a child.
    (core_process,) = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
    body = {"model": "tiny", "prompt": "Keep going", "max_tokens": 100, "ignore_eos": True}
    with process_server.http() as http:  # /metrics describes the engine process too
        families = {f.name: f for f in text_string_to_metric_families(http.get("/metrics").text)}
    (sample,) = families["engine_process_resident_memory_bytes"].samples
    assert sample.value == pytest.approx(core_process.memory_info().rss, rel=0.2)

    async def in_flight():
        async with httpx.AsyncClient(
            base_url=process_server.url, headers=process_server.headers, timeout=60
        ) as client:
            plain = asyncio.create_task(client.post("/v1/completions", json=body))
            async with client.stream(
                "POST", "/v1/completions", json={**body, "stream": True}
            ) as stream:
                lines = stream.aiter_lines()
                first = await anext(lines)
                os.kill(core_process.pid, signal.SIGKILL)
                killed_at = time.monotonic()
                rest = [line async for line in lines]
            return first, rest, await plain, time.monotonic() - killed_at

    first, rest, plain, seconds = asyncio.run(in_flight())
    assert first.startswith("data: ")
    assert seconds < 5.0  # fails fast, no hang
    error_events = [line for line in rest if '"error"' in line]
    assert error_events and "engine" in error_events[-1]
    assert "data: [DONE]" in rest
    assert plain.status_code in (500, 503)
    assert plain.json()["error"]["message"]
    with process_server.http() as http:
        health = http.get("/health")
        assert health.status_code == 503
        assert "engine" in health.json()["error"]["message"]
        refused = http.post("/v1/completions", json=body)
        assert refused.status_code == 503
    assert process_server.proc.poll() is None  # the API server stays up to say why
