"""Engine failures as clients see them, with the app run in-process (Starlette's TestClient):
a step that raises (500, or an error event mid-stream) and a dead engine loop (503)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from skipdecode.config import CacheConfig, EngineConfig, ModelConfig
from skipdecode.server.app import build_app
from skipdecode.server.config import ServerConfig

BODY = {"model": "tiny", "prompt": "hello", "max_tokens": 4, "temperature": 0}


@pytest.fixture
def app_client(tiny_llama_dir):
    engine_config = EngineConfig(
        model=ModelConfig(model=str(tiny_llama_dir), dtype="float32", max_model_len=64),
        cache=CacheConfig(num_blocks=256),
    )
    app = build_app(engine_config, ServerConfig(served_model_names=("tiny",)))
    with TestClient(app) as client:  # runs the lifespan: loads the model, starts the thread
        yield client


def break_steps(app_client) -> None:
    runner = app_client.app.state.client.async_engine.engine.runner

    def failing_run(scheduled):
        raise RuntimeError("simulated kernel failure")

    runner.run = failing_run


def test_failed_step_is_500_in_openai_shape(app_client):
    assert app_client.post("/v1/completions", json=BODY).status_code == 200
    break_steps(app_client)
    response = app_client.post("/v1/completions", json=BODY)
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error"
    assert "simulated kernel failure" in error["message"]


def test_failed_step_mid_stream_sends_an_error_event(app_client):
    break_steps(app_client)
    with app_client.stream("POST", "/v1/completions", json={**BODY, "stream": True}) as r:
        assert r.status_code == 200  # the failure comes after the headers
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["type"] == "server_error" and "simulated" in error["message"]


def test_dead_engine_is_503_and_unhealthy(app_client):
    assert app_client.get("/health").status_code == 200
    app_client.app.state.client.async_engine.shutdown()
    health = app_client.get("/health")
    assert health.status_code == 503
    response = app_client.post("/v1/completions", json=BODY)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_draining_server_refuses_new_requests(app_client):
    app_client.app.state.client.is_draining = True
    assert app_client.get("/health").status_code == 503
    response = app_client.post("/v1/completions", json=BODY)
    assert response.status_code == 503
    assert "shutting down" in response.json()["error"]["message"]
