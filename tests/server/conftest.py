"""Real servers on loopback ports, started as subprocesses (``python -m skipdecode.cli serve``)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai
import pytest

API_KEY = "test-key"
STARTUP_TIMEOUT_S = 180.0
MAX_MODEL_LEN = 128
NUM_LAYERS = 8  # tests/tiny_models.py
# The shared server's default schedule (requests without ``skip`` get it).
DEFAULT_SKIP = {"warmup_layers": 1, "max_depth": 7, "min_depth": 4, "decay_tokens": 6}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """One ``skipdecode serve`` subprocess; its output goes to a log file shown on failure."""

    def __init__(self, args: list[str], api_key: str | None = API_KEY) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        cmd = [sys.executable, "-m", "skipdecode.cli", "serve", "--port", str(self.port), *args]
        if api_key is not None:
            cmd += ["--api-key", api_key]
        fd, log_path = tempfile.mkstemp(suffix=".log", prefix="skipdecode-server-")
        os.close(fd)
        self.log_path = Path(log_path)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("SKIPDECODE_API_KEY", None)
        with self.log_path.open("w") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log_tail(self, num_chars: int = 4000) -> str:
        return self.log_path.read_text()[-num_chars:]

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"server not healthy after {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.log_path.unlink(missing_ok=True)

    def openai_client(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.url}/v1", api_key=self.api_key or "none", max_retries=0, timeout=120
        )

    def async_openai_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key=self.api_key or "none", max_retries=0, timeout=120
        )

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=120)


def streams_cut_short(
    server: ServerProcess, endpoint: str, body: dict, num_streams: int, num_chunks: int = 3
) -> list[int]:
    """Open ``num_streams`` streams at once and hang up on each after ``num_chunks`` SSE chunks;
    returns the chunks each stream read."""

    async def cut_short(client: httpx.AsyncClient) -> int:
        read = 0
        async with client.stream("POST", endpoint, json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                read += line.startswith("data: ")
                if read == num_chunks:
                    break  # leaving the block closes the connection mid-stream
        return read

    async def run() -> list[int]:
        limits = httpx.Limits(max_connections=num_streams)
        async with httpx.AsyncClient(
            base_url=server.url, headers=server.headers, timeout=120, limits=limits
        ) as client:
            return list(await asyncio.gather(*(cut_short(client) for _ in range(num_streams))))

    return asyncio.run(run())


def tiny_args(model_dir: Path, *extra: str) -> list[str]:
    """A tiny random Llama in float32 with a small context and KV pool."""
    return [
        "--model", str(model_dir),
        "--served-model-name", "tiny", "tiny-alias",
        "--dtype", "float32",
        "--kv-cache-memory", "0.05",
        "--max-model-len", str(MAX_MODEL_LEN),
        "--log-level", "warning",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="session")
def server(tiny_llama_dir):
    """The server most tests share: tiny model, API key, a default skip schedule."""
    skip_flags = [f"--{k.replace('_', '-')}={v}" for k, v in DEFAULT_SKIP.items()]
    proc = ServerProcess(tiny_args(tiny_llama_dir, *skip_flags))
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def client(server) -> openai.OpenAI:
    return server.openai_client()


@pytest.fixture
def http(server):
    with server.http() as http_client:
        yield http_client


@pytest.fixture(scope="session")
def default_model_server():
    """One server on the default model (SmolLM2 with its shipped adapter, no --model), shared
    by the test modules that need the real model: it takes ~20 s to start."""
    proc = ServerProcess(["--kv-cache-memory", "0.5", "--log-level", "warning"], api_key=None)
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()
