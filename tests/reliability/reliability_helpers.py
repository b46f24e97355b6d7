"""Helpers of the reliability tests: servers, engine occupancy, metrics, RSS, error shape.

A module of its own (not conftest.py, whose name every test folder shares). The server helpers
come from tests/server/conftest.py, loaded under another module name so that its fixtures stay
where they are. ``SKIPDECODE_STRESS=1`` (``make stress``) runs the long versions: more fuzz
cases, bigger storms and bursts, a longer soak.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from skipdecode.benchmarks.soak import rss_bytes  # noqa: F401 (re-exported for the tests)


def _server_helpers():
    path = Path(__file__).parents[1] / "server" / "conftest.py"
    spec = importlib.util.spec_from_file_location("server_test_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_helpers = _server_helpers()
ServerProcess = _helpers.ServerProcess
tiny_args = _helpers.tiny_args
API_KEY = _helpers.API_KEY

IS_STRESS = os.environ.get("SKIPDECODE_STRESS") == "1"
SMALL_CONTEXT = 64  # the shared server's --max-model-len: nothing it runs can take long
SMALL_SERVER_NAME = "tiny"


def stress_or(fast: int, stress: int) -> int:
    """``fast`` in the test suite, ``stress`` under ``make stress``."""
    return stress if IS_STRESS else fast


def engine_stats(http: httpx.Client) -> dict:
    return http.get("/internal/stats").json()


def wait_for_idle(http: httpx.Client, timeout: float = 60.0) -> dict:
    """Stats once nothing runs, waits or holds a KV block (AssertionError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = engine_stats(http)
        busy = (
            stats["num_running"],
            stats["num_waiting"],
            stats["num_unfinished"],
            stats["num_open_responses"],
            stats["kv_used_blocks"],
        )
        if not any(busy):
            return stats
        assert time.monotonic() < deadline, f"engine still busy after {timeout}s: {stats}"
        time.sleep(0.1)


def metric_value(http: httpx.Client, name: str, **labels: str) -> float:
    """The sum of a Prometheus series' samples that carry ``labels``."""
    total, found = 0.0, False
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total, found = total + sample.value, True
    assert found, f"no {name}{labels} in /metrics"
    return total


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    """The response is ``status`` with OpenAI's error body; returns the ``error`` object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    return error
