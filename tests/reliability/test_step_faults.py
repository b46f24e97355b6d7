"""Engine faults through HTTP, with the app in-process: an exception inside one step fails only
the requests that step ran (500, OpenAI shape) and frees their blocks while the waiting ones
still finish; an exception that kills the engine loop turns in-flight requests and /health
into 503s instead of hangs. (tests/server/test_engine_failures.py covers a permanently failing
runner and an orderly engine shutdown.)"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from reliability_helpers import assert_openai_error

from skipdecode.config import CacheConfig, EngineConfig, ModelConfig
from skipdecode.scheduler import SchedulerConfig
from skipdecode.server.app import build_app
from skipdecode.server.config import ServerConfig

MAX_NUM_SEQS = 2
NUM_TOKENS = 24


@pytest.fixture
def app_client(tiny_llama_dir):
    engine_config = EngineConfig(
        model=ModelConfig(model=str(tiny_llama_dir), dtype="float32", max_model_len=64),
        cache=CacheConfig(num_blocks=256),
        scheduler=SchedulerConfig(max_num_seqs=MAX_NUM_SEQS),
    )
    app = build_app(engine_config, ServerConfig(served_model_names=("tiny",)))
    with TestClient(app) as client:  # runs the lifespan: loads the model, starts the thread
        yield client


def engine_of(app_client):
    return app_client.app.state.client.async_engine.engine


def body(i: int) -> dict:
    prompt = f"Request {i}"
    return {"model": "tiny", "prompt": prompt, "max_tokens": NUM_TOKENS, "ignore_eos": True}


def fail_one_full_step(engine) -> list[set[str]]:
    """Make the first step that runs MAX_NUM_SEQS decodes while others wait raise, once.
    Returns a list that receives the request ids of that step."""
    original, failed = engine.runner.run, []

    def run(scheduled):
        is_full = len(scheduled.sequences) == MAX_NUM_SEQS and engine.scheduler.waiting
        if not failed and is_full and all(s.output_token_ids for s in scheduled.sequences):
            failed.append({s.request_id for s in scheduled.sequences})
            raise RuntimeError("injected fault in one step")
        return original(scheduled)

    engine.runner.run = run
    return failed


def test_failed_step_fails_only_its_requests(app_client):
    engine = engine_of(app_client)
    failed = fail_one_full_step(engine)
    num_requests = 2 * MAX_NUM_SEQS
    with ThreadPoolExecutor(num_requests) as pool:
        responses = list(pool.map(lambda i: app_client.post("/v1/completions", json=body(i)),
                                  range(num_requests)))  # fmt: skip
    codes = sorted(r.status_code for r in responses)
    assert len(failed) == 1 and len(failed[0]) == MAX_NUM_SEQS
    assert codes == [200] * (num_requests - MAX_NUM_SEQS) + [500] * MAX_NUM_SEQS, codes
    for response in responses:
        if response.status_code == 500:
            error = assert_openai_error(response, 500)
            assert error["type"] == "server_error" and error["code"] == "step_failed"
            assert "injected fault" in error["message"]
        else:
            assert response.json()["usage"]["completion_tokens"] == NUM_TOKENS
    # Their blocks are back, nothing is left over, and the engine keeps serving.
    stats = app_client.get("/internal/stats").json()
    assert stats["kv_used_blocks"] == 0 and stats["num_unfinished"] == 0
    assert not engine.scheduler.requests and not engine.runner._generators
    again = app_client.post("/v1/completions", json=body(9))
    assert again.status_code == 200 and app_client.get("/health").status_code == 200


def test_dead_engine_loop_answers_503_not_a_hang(app_client):
    engine = engine_of(app_client)
    long = {**body(0), "max_tokens": 60, "stream": True}
    in_flight: dict = {}
    started = threading.Event()

    def stream() -> None:
        with app_client.stream("POST", "/v1/completions", json=long) as response:
            in_flight["status"] = response.status_code
            events = []
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    started.set()
            in_flight["events"] = events

    reader = threading.Thread(target=stream)
    reader.start()
    assert started.wait(30)

    def broken_add(request) -> None:  # a bug outside any step: the loop itself dies
        raise RuntimeError("injected fault in the engine loop")

    engine.add = broken_add
    fatal = app_client.post("/v1/completions", json=body(1))
    reader.join(30)
    assert not reader.is_alive(), "the in-flight stream hangs"
    start = time.monotonic()
    health = app_client.get("/health")
    assert time.monotonic() - start < 5.0
    assert_openai_error(health, 503)
    assert_openai_error(fatal, 503)
    error_events = [e for e in in_flight["events"] if '"error"' in e]
    assert in_flight["events"][-1] == "[DONE]" and len(error_events) == 1
    assert "engine" in error_events[0]
    late = app_client.post("/v1/completions", json=body(2))
    assert_openai_error(late, 503)
    assert late.headers["Retry-After"] == "1"
