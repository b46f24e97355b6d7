"""A fake OpenAI-style streaming server on 127.0.0.1, for ``bench serve`` without a model."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class FakeCompletions:
    """Streams ``max_tokens`` one-character chunks per request, without usage, then [DONE].

    ``fail_every``: every n-th request (1-based) gets HTTP 500; ``stall_s``: each request
    waits this long before answering; ``max_model_len``: if set, ``GET /v1/models`` reports it
    (else that path is a 404). Received bodies are kept in ``bodies``.
    """

    def __init__(
        self, fail_every: int = 0, stall_s: float = 0.0, max_model_len: int | None = None
    ) -> None:
        self.fail_every = fail_every
        self.stall_s = stall_s
        self.max_model_len = max_model_len
        self.bodies: list[dict] = []
        self._lock = threading.Lock()

    def handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                if self.path != "/v1/models" or fake.max_model_len is None:
                    self.send_error(404)
                    return
                card = {"id": "fake", "object": "model", "max_model_len": fake.max_model_len}
                payload = json.dumps({"object": "list", "data": [card]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake._lock:
                    fake.bodies.append(body)
                    number = len(fake.bodies)
                time.sleep(fake.stall_s)
                if fake.fail_every and number % fake.fail_every == 0:
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b'{"error": "boom"}')
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for _ in range(body["max_tokens"]):
                    chunk = {"choices": [{"index": 0, "text": "x", "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")

        return Handler


@pytest.fixture
def fake_server():
    """Start a FakeCompletions server; yields a function that configures it and returns URLs."""
    servers: list[ThreadingHTTPServer] = []

    def start(**options) -> tuple[str, FakeCompletions]:
        fake = FakeCompletions(**options)
        server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", fake

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
