"""Schema fuzzing: schemathesis generates requests from the server's own /openapi.json, valid
(positive) and invalid (negative) ones, for every operation. Each answer must be no 5xx, an
OpenAI-shaped error body for every 4xx, a status, content type and body the document declares,
a 4xx for schema-invalid data, and, for a 200 stream, events that end in [DONE] with no error
event. The server must still serve normally afterwards."""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from reliability_helpers import (
    API_KEY,
    SMALL_SERVER_NAME,
    assert_openai_error,
    stress_or,
    wait_for_idle,
)
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

# Examples per (operation with a body, mode); operations without a body vary only in headers.
EXAMPLES_PER_MODE = stress_or(80, 1500)
EXAMPLES_WITHOUT_BODY = 10
MIN_CASES = stress_or(600, 10000)
# Generations without max_tokens would run to the end of the context: keep them short.
DEFAULT_MAX_TOKENS = 4
ERROR_KEYS = {"message", "type", "param", "code"}


@schemathesis.check
def openai_error_shape(ctx, response, case) -> bool | None:
    """Every 4xx/5xx body is ``{"error": {"message", "type", "param", "code"}}``."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert set(body) == {"error"}, f"error body is not OpenAI's shape: {body}"
    assert set(body["error"]) == ERROR_KEYS, f"error object keys: {sorted(body['error'])}"
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return True


@schemathesis.check
def complete_event_stream(ctx, response, case) -> bool | None:
    """A 200 stream is ``data: {json}`` events ending in ``[DONE]``, none of them an error.

    Schemathesis reads 20 events at most, then hangs up (one more disconnect for the server).
    """
    content_type = response.headers.get("content-type", [""])[0]
    if response.status_code != 200 or not content_type.startswith("text/event-stream"):
        return None
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    if not response.stream_cut_short:
        assert events and events[-1] == "[DONE]", f"stream does not end in [DONE]: {events[-3:]}"
    for event in events:
        if event != "[DONE]":
            assert "error" not in json.loads(event), f"error event in a 200 stream: {event}"
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    openai_error_shape,
    complete_event_stream,
]


def keep_generation_short(body: object) -> None:
    if not isinstance(body, dict):
        return
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = DEFAULT_MAX_TOKENS


def fuzz_operation(operation, mode: GenerationMode, url: str, statuses: Counter) -> None:
    session = requests.Session()
    headers = {"Authorization": f"Bearer {API_KEY}"}

    @settings(
        max_examples=EXAMPLES_PER_MODE if operation.body else EXAMPLES_WITHOUT_BODY,
        deadline=None,
        database=None,
        derandomize=True,  # the same cases on every run
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
        report_multiple_bugs=False,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        keep_generation_short(case.body)
        response = case.call(base_url=url, session=session, headers=headers, timeout=60)
        statuses[(operation.label, mode.value, response.status_code)] += 1
        case.validate_response(response, checks=CHECKS, headers=headers)

    run()


def test_fuzz_every_operation_from_the_openapi_document(small_server, small_http):
    url = small_server.url
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    statuses: Counter = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {
        "POST /v1/completions",
        "POST /v1/chat/completions",
        "POST /tokenize",
        "POST /detokenize",
        "GET /v1/models",
        "GET /health",
    }
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.NEGATIVE and not operation.body:
                continue  # nothing to make invalid
            fuzz_operation(operation, mode, url, statuses)

    num_cases = sum(statuses.values())
    summary = "\n".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
    print(f"\nfuzzed {num_cases} cases\n{summary}")
    assert num_cases >= MIN_CASES, summary
    assert not [key for key in statuses if key[2] >= 500], summary
    # The fuzzer got past validation too: generations ran.
    assert statuses[("POST /v1/completions", "positive", 200)] > 10, summary
    assert statuses[("POST /v1/chat/completions", "positive", 200)] > 10, summary
    # Alive and correct afterwards.
    wait_for_idle(small_http)
    body = {"model": SMALL_SERVER_NAME, "prompt": "hello", "max_tokens": 3, "temperature": 0}
    first = small_http.post("/v1/completions", json=body)
    assert first.status_code == 200, first.text
    assert first.json()["usage"]["completion_tokens"] == 3
    assert (
        small_http.post("/v1/completions", json=body).json()["choices"] == first.json()["choices"]
    )


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/tokenize"])
def test_documented_errors_match_the_answers(small_server, path):
    """The document declares the statuses the server answers with (400, not FastAPI's 422)."""
    document = httpx.get(f"{small_server.url}/openapi.json", timeout=30).json()
    declared = set(document["paths"][path]["post"]["responses"])
    assert "422" not in declared and {"200", "400", "401", "404", "413"} <= declared
    headers = {"Authorization": f"Bearer {API_KEY}"}
    response = httpx.post(f"{small_server.url}{path}", json={"n": "x"}, headers=headers)
    assert_openai_error(response, 400)
