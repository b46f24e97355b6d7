"""Hostile input: each answered with a 400 (413 for an oversized body) in OpenAI's error shape
and a message that says what is wrong, quickly, with the server still healthy afterwards.
(tests/server/test_errors.py covers the ordinary cases: wrong types, ranges, empty prompts and
messages, unknown roles, out-of-vocabulary ids, logprobs and n limits, skip knobs.)"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from reliability_helpers import SMALL_CONTEXT, assert_openai_error, rss_bytes

from skipdecode.server.protocol import MAX_DECAY_TOKENS, MAX_NUM_CHOICES, MAX_STOP

MAX_REQUEST_BYTES = 4 * 1024 * 1024  # the server's default --max-request-bytes
QUICK_S = 10.0  # "quickly": far below any client timeout, on a loaded 2-core machine
JSON = {"Content-Type": "application/json"}
PROMPT = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def post_quickly(http, path: str, **kwargs):
    start = time.monotonic()
    response = http.post(path, **kwargs)
    assert time.monotonic() - start < QUICK_S, f"{path} took {time.monotonic() - start:.1f}s"
    return response


RAW_BODIES = [  # (body bytes, words the message must contain)
    (b'{"prompt": "\xff\xfe", "max_tokens": 2}', "UTF-8"),  # invalid UTF-8
    (b"[" * 100_000 + b"]" * 100_000, "too deep"),  # json.loads recursion
    (b'{"prompt": "hi", "max_tokens": ' + b"9" * 5000 + b"}", "number"),  # int() digit limit
    (b'{"prompt": "hi", "temperature": NaN}', "finite"),
    (b'{"prompt": "hi", "temperature": Infinity}', "finite"),
    (b'{"prompt": "hi", "top_p": 1e999}', "finite"),
    (b'{"prompt": "hi", "max_tokens": 2', "not valid JSON"),
    (b"", "Field required"),
]


@pytest.mark.parametrize(("payload", "words"), RAW_BODIES)
def test_unparseable_or_non_finite_bodies_are_400(small_http, payload, words):
    error = assert_openai_error(
        post_quickly(small_http, "/v1/completions", content=payload, headers=JSON), 400
    )
    assert words in error["message"], error


def skip(**knobs) -> dict:
    return {**PROMPT, "skip": knobs}


LONE_SURROGATE = "a\ud800b"  # valid JSON ("\\ud800"), not valid Unicode: tokenizers reject it
HOSTILE_FIELDS = [  # (path, body, param the error names, or "any")
    ("/v1/completions", {**PROMPT, "prompt": LONE_SURROGATE}, None),
    ("/v1/completions", {**PROMPT, "stop": [LONE_SURROGATE]}, None),
    ("/v1/completions", {**PROMPT, "model": LONE_SURROGATE}, None),
    ("/v1/completions", {**PROMPT, "skip": {LONE_SURROGATE: 1}}, None),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "\udfff"}]}, None),
    ("/tokenize", {"prompt": LONE_SURROGATE}, None),
    ("/v1/completions", {**PROMPT, "max_tokens": 10**30}, None),  # beyond the context
    ("/v1/completions", {**PROMPT, "max_tokens": -(10**30)}, "max_tokens"),
    ("/v1/chat/completions", {**CHAT, "max_completion_tokens": 2**63}, None),
    ("/v1/completions", {**PROMPT, "temperature": 1, "seed": 2**64}, "seed"),  # was a 500
    ("/v1/completions", {**PROMPT, "n": 65}, "n"),
    ("/v1/completions", {**PROMPT, "prompt": ["a"] * 200, "n": 2}, "prompt"),  # > 256 choices
    ("/v1/completions", {**PROMPT, "stop": ["x"] * (MAX_STOP + 1)}, "stop"),
    ("/v1/completions", {**PROMPT, "logprobs": 10**6}, "logprobs"),
    ("/v1/chat/completions", {**CHAT, "logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ("/v1/completions", {**PROMPT, "top_p": -0.1}, "top_p"),
    ("/v1/completions", {**PROMPT, "temperature": -1e-9}, "temperature"),
    ("/v1/completions", {**PROMPT, "prompt": [2**70]}, "prompt"),
    ("/v1/completions", {**PROMPT, "prompt": [[1, 2], []]}, "prompt"),
    ("/detokenize", {"tokens": [-1]}, "tokens"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "robot", "content": "x"}]}, "messages"),
    ("/v1/chat/completions", {**CHAT, "guided_regex": "(" * 40}, "guided_regex"),
    ("/v1/chat/completions", {**CHAT, "guided_json": {"type": [1]}}, "guided_json"),
    ("/v1/chat/completions", {**CHAT, "guided_grammar": "start: " + "(" * 5000}, "guided_grammar"),
    ("/v1/completions", {**PROMPT, "guided_choice": ["a"] * 257}, "guided_choice"),
    ("/v1/chat/completions", {**CHAT, "tools": [{"type": "function", "function": {}}]}, "tools"),
    ("/v1/completions", skip(decay_tokens=MAX_DECAY_TOKENS + 1), "skip.decay_tokens"),
    ("/v1/completions", skip(decay_tokens=10**12, speedup=2), "skip.decay_tokens"),
    ("/v1/completions", skip(speedup=1e308), "skip.speedup"),
    ("/v1/completions", skip(warmup_layers=10**9, max_depth=3), "skip.max_depth"),
    ("/v1/completions", skip(min_depth=3, max_depth=2), "skip.min_depth"),
    ("/v1/completions", skip(max_depth=-3), "skip.max_depth"),
    ("/v1/completions", {**PROMPT, "skip": [1, 2]}, "skip"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "param"), HOSTILE_FIELDS)
def test_hostile_fields_are_400(small_http, path, body, param):
    payload = json.dumps(body)  # ASCII: lone surrogates travel as JSON escapes
    error = assert_openai_error(post_quickly(small_http, path, content=payload, headers=JSON), 400)
    if param is not None:
        assert error["param"] == param, error


def test_choice_limit_is_named(small_http):
    body = {**PROMPT, "prompt": ["a"] * (MAX_NUM_CHOICES + 1)}
    error = assert_openai_error(post_quickly(small_http, "/v1/completions", json=body), 400)
    assert str(MAX_NUM_CHOICES) in error["message"]


@pytest.mark.parametrize("chunked", [False, True])
def test_body_over_the_size_limit_is_413(small_http, chunked):
    payload = b'{"prompt": "' + b"a" * MAX_REQUEST_BYTES + b'"}'
    content = (
        (payload[i : i + 65536] for i in range(0, len(payload), 65536)) if chunked else payload
    )
    response = post_quickly(small_http, "/v1/completions", content=content, headers=JSON)
    error = assert_openai_error(response, 413)
    assert error["code"] == "request_too_large" and str(MAX_REQUEST_BYTES) in error["message"]


def test_megabyte_prompts_are_refused_cheaply(small_server, small_http):
    """Millions of characters under the size limit, several at once: refused (400) from a
    prefix, off the event loop, without the hundreds of MiB a full tokenization would take."""
    texts = ["lorem ipsum " * 300_000, "a" * 3_500_000, "\u00e9t\u00e9 " * 600_000]  # 3.5-3.6 MB
    bodies = [("/v1/completions", {**PROMPT, "prompt": text}) for text in texts]
    bodies += [("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": t}]})
               for t in texts]  # fmt: skip
    bodies.append(("/v1/completions", {**PROMPT, "prompt": ["lorem ipsum " * 1300] * 250}))
    rss_before = rss_bytes(small_server.proc.pid)

    def post(path: str, body: dict):
        with small_server.http() as http:
            return http.post(path, json=body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        sent = [pool.submit(post, path, body) for path, body in bodies]
        health_s = []
        while not all(future.done() for future in sent):
            start = time.monotonic()
            assert small_http.get("/health").status_code == 200
            health_s.append(time.monotonic() - start)
            time.sleep(0.05)
    rss_growth = rss_bytes(small_server.proc.pid) - rss_before
    for future in sent:
        error = assert_openai_error(future.result(), 400)
        assert f"max_model_len={SMALL_CONTEXT}" in error["message"], error
    assert max(health_s) < 1.0, f"/health stalled {max(health_s):.2f}s"
    assert rss_growth < 100 * 1024 * 1024, f"RSS grew {rss_growth / 2**20:.0f} MiB"


def test_server_is_healthy_after_hostile_input(small_http):
    assert small_http.get("/health").status_code == 200
    response = small_http.post("/v1/completions", json={**PROMPT, "temperature": 0})
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 2
