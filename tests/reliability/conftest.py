"""Fixtures of the reliability tests: the shared small-context server (helpers live in
reliability_helpers.py)."""

from __future__ import annotations

import pytest
from reliability_helpers import SMALL_CONTEXT, ServerProcess, tiny_args


@pytest.fixture(scope="session")
def small_server(tiny_llama_dir):
    """Tiny model, API key, a 64-token context, logging at the default level (info)."""
    args = tiny_args(tiny_llama_dir, "--max-model-len", str(SMALL_CONTEXT), "--log-level", "info")
    proc = ServerProcess(args)
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


@pytest.fixture
def small_http(small_server):
    with small_server.http() as client:
        yield client
