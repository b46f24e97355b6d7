"""Every error path over raw HTTP: status code, OpenAI error shape, and the field it names."""

from __future__ import annotations

import httpx
import pytest
from conftest import MAX_MODEL_LEN

VOCAB = 49152
MESSAGES = [{"role": "user", "content": "hi"}]


def assert_error(response: httpx.Response, status: int, param: str | None = "any") -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if param != "any":
        assert error["param"] == param, error
    return error


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/models", None),
        ("POST", "/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 1}),
        ("POST", "/v1/chat/completions", {"model": "tiny", "messages": MESSAGES}),
        ("POST", "/tokenize", {"prompt": "hi"}),
        ("POST", "/detokenize", {"tokens": [1, 2]}),
        ("GET", "/internal/stats", None),
    ],
)
@pytest.mark.parametrize("auth", [None, "Bearer wrong-key", "Basic test-key", "test-key"])
def test_api_paths_need_the_key(server, method, path, body, auth):
    headers = {"Authorization": auth} if auth else {}
    response = httpx.request(method, server.url + path, json=body, headers=headers, timeout=30)
    assert assert_error(response, 401)["code"] == "invalid_api_key"


@pytest.mark.parametrize("path", ["/health", "/version", "/metrics"])
def test_open_paths_need_no_key(server, path):
    assert httpx.get(server.url + path, timeout=30).status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"model": "gpt-4", "prompt": "hi"}),
        ("/v1/chat/completions", {"model": "gpt-4", "messages": MESSAGES}),
        ("/tokenize", {"model": "gpt-4", "prompt": "hi"}),
    ],
)
def test_unknown_model_is_404(http, path, body):
    error = assert_error(http.post(path, json=body), 404, "model")
    assert "gpt-4" in error["message"]
    assert error["code"] == "model_not_found"


def test_unknown_route_is_404_in_openai_shape(http):
    assert_error(http.get("/v1/nothing-here"), 404)


COMPLETION_ERRORS = [
    ({"temperature": "hot"}, "temperature"),
    ({"max_tokens": "many"}, "max_tokens"),
    ({"prompt": {"text": "hi"}}, "prompt"),
    ({"stop": 5}, "stop"),
    ({"temperature": -0.5}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": 0}, "top_p"),
    ({"min_p": 2}, "min_p"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"n": 1000}, "n"),
    ({"n": 0}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"logprobs": 21}, "logprobs"),
    ({"stop": [""]}, "stop"),
    ({"max_tokens": MAX_MODEL_LEN}, None),  # prompt + max_tokens beyond the context
    ({"prompt": "word " * (MAX_MODEL_LEN + 5)}, None),  # the prompt alone is too long
    ({"prompt": ""}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [VOCAB]}, "prompt"),  # token ids outside the vocabulary
    ({"prompt": [[1, 2], [-1]]}, "prompt"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"skip": "fast"}, "skip"),
    ({"skip": {"speedup": 0.5}}, "skip.speedup"),
    ({"skip": {"speedup": 50}}, "skip.speedup"),  # unreachable with 8 layers
    ({"skip": {"max_depth": 100}}, "skip.max_depth"),  # more layers than the model
    ({"skip": {"max_depth": 4, "min_depth": 6}}, "skip.min_depth"),
    ({"skip": {"speedup": 2, "max_depth": 6}}, "skip.speedup"),
    ({"skip": {"bogus": 1}}, "skip"),
    ({"skip": {"decay_tokens": 0}}, "skip.decay_tokens"),
    ({"logit_bias": {"1": 5}}, None),  # not implemented: refused rather than ignored
    ({"suffix": "end"}, None),
]


@pytest.mark.parametrize(("fields", "param"), COMPLETION_ERRORS)
@pytest.mark.parametrize("stream", [False, True])
def test_invalid_completion_is_400(http, fields, param, stream):
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 2, "stream": stream, **fields}
    if "stream_options" in fields:
        body["stream"] = False
    assert_error(http.post("/v1/completions", json=body), 400, param)


CHAT_ERRORS = [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ({"messages": [{"content": "hi"}]}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
    ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs=true
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"max_completion_tokens": MAX_MODEL_LEN}, None),
    ({"temperature": -1}, "temperature"),
    ({"skip": {"warmup_layers": -1}}, "skip.warmup_layers"),
]


@pytest.mark.parametrize(("fields", "param"), CHAT_ERRORS)
def test_invalid_chat_is_400(http, fields, param):
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 2, **fields}
    assert_error(http.post("/v1/chat/completions", json=body), 400, param)


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/tokenize"])
@pytest.mark.parametrize("payload", [b'{"model": "tiny", "prompt": ', b"[1, 2]", b"null"])
def test_body_that_is_not_a_json_object_is_400(http, path, payload):
    headers = {"Content-Type": "application/json"}
    assert_error(http.post(path, content=payload, headers=headers), 400)


def test_invalid_tokenize_requests_are_400(http):
    assert_error(http.post("/tokenize", json={}), 400, "prompt")
    both = {"prompt": "a", "messages": MESSAGES}
    assert_error(http.post("/tokenize", json=both), 400, "prompt")
    assert_error(http.post("/detokenize", json={"tokens": [VOCAB + 1]}), 400, "tokens")


def test_server_still_serves_after_errors(http):
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 3, "temperature": 0}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] >= 1
