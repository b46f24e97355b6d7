"""Security: every API route of the app needs the key (compared in constant time) while the
probe routes stay open; the server listens on loopback unless told otherwise; prompts never
reach the log at the default level. (The Docker images' non-root USER is checked in
tests/deploy/test_dockerfiles.py.)"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from reliability_helpers import API_KEY

from skipdecode import cli_args
from skipdecode.cli import build_parser
from skipdecode.config import EngineConfig, ModelConfig
from skipdecode.server import middleware
from skipdecode.server.app import build_app
from skipdecode.server.config import ServerConfig

# Open on purpose: probes, scrapers and the API description (docs/reliability.md).
OPEN_PATHS = {"/health", "/version", "/metrics", "/openapi.json", "/docs", "/redoc"}


@pytest.fixture(scope="module")
def keyed_app():
    """The app's routes and middleware, without starting the engine (the key check runs
    before any route, so no model is needed)."""
    config = ServerConfig(served_model_names=("tiny",), api_key=API_KEY)
    return build_app(EngineConfig(model=ModelConfig(model="unused")), config)


def every_route(routes) -> list[tuple[str, str]]:
    """(method, path) of every route, through included routers (FastAPI keeps them nested)."""
    found = []
    for route in routes:
        if not hasattr(route, "path"):
            included = getattr(route, "original_router", None) or route.router
            found += every_route(included.routes)
            continue
        methods = getattr(route, "methods", None) or {"GET"}
        found += [(method, route.path) for method in sorted(methods - {"HEAD"})]
    return found


def test_every_route_is_keyed_or_deliberately_open(keyed_app):
    routes = every_route(keyed_app.routes)
    assert {path for _, path in routes} >= OPEN_PATHS | {"/v1/completions", "/internal/stats"}
    client = TestClient(keyed_app)  # no lifespan: the engine never starts
    for method, path in routes:
        if path in OPEN_PATHS or path.startswith("/docs/"):
            continue
        assert path.startswith(middleware.PROTECTED_PREFIXES), f"{path} is neither"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
            response = client.request(method, path, headers=headers, json={})
            assert response.status_code == 401, (method, path, headers)
            assert response.json()["error"]["code"] == "invalid_api_key"


def test_openapi_document_declares_the_key(keyed_app):
    document = TestClient(keyed_app).get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, operations in document["paths"].items():
        for operation in operations.values():
            is_keyed = path.startswith(middleware.PROTECTED_PREFIXES)
            assert ("security" in operation) == is_keyed, path
            assert ("401" in operation["responses"]) == is_keyed, path


def test_key_is_compared_in_constant_time(keyed_app, monkeypatch):
    compared = []

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return a == b

    monkeypatch.setattr(middleware.hmac, "compare_digest", spy)
    client = TestClient(keyed_app)
    wrong = [API_KEY[:-1] + "x", API_KEY[:3], API_KEY + "-longer"]
    for key in wrong:
        response = client.get("/internal/stats", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 401
    assert compared == [(key.encode(), API_KEY.encode()) for key in wrong]


def test_default_bind_is_loopback():
    args = build_parser().parse_args(["serve"])
    assert cli_args.server_config(args).host == "127.0.0.1"
    assert ServerConfig(served_model_names=("x",)).host == "127.0.0.1"
    assert args.log_level == "info"  # the level the log test below runs at


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket in LISTEN state on ``port`` (/proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:
                found.add(address)
    return found


def test_running_server_listens_on_loopback_only(small_server):
    assert listening_addresses(small_server.port) == {"0100007F"}  # 127.0.0.1, little-endian


def test_prompts_never_reach_the_log(small_server, small_http):
    marker = f"SECRET-{uuid.uuid4().hex}"
    chat = [{"role": "user", "content": f"{marker} chat"}]
    requests = [
        ("/v1/completions", {"model": "tiny", "prompt": f"{marker} plain", "max_tokens": 2}),
        ("/v1/completions", {"prompt": marker, "max_tokens": 2, "stream": True, "user": marker}),
        ("/v1/completions", {"prompt": marker, "max_tokens": 2, "stop": [marker]}),
        ("/v1/completions", {"prompt": marker, "temperature": -1}),  # 400
        ("/v1/completions", {"prompt": marker * 200, "max_tokens": 2}),  # 400: too long
        ("/v1/chat/completions", {"messages": chat, "max_tokens": 2, "logprobs": True}),
        ("/v1/chat/completions", {"messages": chat, "max_tokens": 2, "skip": {"bad": marker}}),
        ("/tokenize", {"prompt": marker}),
        (
            "/detokenize",
            {"tokens": small_http.post("/tokenize", json={"prompt": marker}).json()["tokens"]},
        ),  # fmt: skip
    ]
    codes = [small_http.post(path, json=body).status_code for path, body in requests]
    assert 200 in codes and 400 in codes
    log = small_server.log_path.read_text()
    assert '"POST /v1/completions HTTP/1.1" 200' in log  # the log is there, at info level
    assert marker not in log
