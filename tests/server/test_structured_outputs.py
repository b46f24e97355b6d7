"""Structured outputs and tool calls through the OpenAI API, with the default model (SmolLM2
with its skip-aware adapter): every constrained output parses and validates, sampled, at 1x and
2x, streamed or not; the official SDK's parse helper and tool calls work; bad schemas are 400s."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import pydantic
import pytest
from structured_schemas import SCHEMAS

pytestmark = pytest.mark.slow
MODEL = "SmolLM2-135M-Instruct"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]


@pytest.fixture(scope="module")
def server(default_model_server):
    return default_model_server


def _stream_text(stream) -> tuple[str, str | None]:
    text, finish = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return text, finish


MODES = [(speedup, stream) for speedup in (1, 2) for stream in (False, True)]


def test_twenty_schemas_sampled_always_validate(server):
    """Every schema at 1x and 2x, streamed and not, sampled at temperature 1: 80 requests at
    once (the engine batches them), each with its own seed."""
    client = server.openai_client()

    def ask(case: tuple[int, int, bool, str, dict]) -> tuple[str, str | None]:
        seed, speedup, stream, name, schema = case
        kwargs = dict(
            model=MODEL,
            messages=[{"role": "user", "content": f"Give an example of a {name} as JSON."}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": name, "schema": schema},
            },
            temperature=1.0,
            seed=seed,
            max_tokens=400,
            extra_body={"skip": {"speedup": speedup}},
        )
        if stream:
            return _stream_text(client.chat.completions.create(stream=True, **kwargs))
        choice = client.chat.completions.create(**kwargs).choices[0]
        return choice.message.content, choice.finish_reason

    cases = [
        (seed, speedup, stream, name, schema)
        for seed, (name, schema) in enumerate(SCHEMAS)
        for speedup, stream in MODES
    ]
    with ThreadPoolExecutor(len(cases)) as pool:
        results = list(pool.map(ask, cases))
    for (_, speedup, stream, name, schema), (text, finish) in zip(cases, results):
        assert finish == "stop", (name, speedup, stream, text)
        jsonschema.validate(json.loads(text), schema)


def test_completions_take_guided_choice_regex_and_json(server):
    client = server.openai_client()
    choices = ["Paris", "London", "Rome"]
    out = client.completions.create(
        model=MODEL,
        prompt="The capital of France is",
        max_tokens=8,
        temperature=1.0,
        extra_body={"guided_choice": choices},
    )
    assert out.choices[0].text in choices and out.choices[0].finish_reason == "stop"
    stream = client.completions.create(
        model=MODEL,
        prompt="Call me at",
        max_tokens=20,
        stream=True,
        extra_body={"guided_regex": r" \d{3}-\d{4}"},
    )
    text = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
    assert len(text) == 9 and text[4] == "-" and text.replace("-", "").strip().isdigit()
    out = client.completions.create(
        model=MODEL,
        prompt="A JSON object describing a cat:",
        max_tokens=100,
        temperature=1.0,
        extra_body={"guided_json": SCHEMAS[0][1]},
    )
    jsonschema.validate(json.loads(out.choices[0].text), SCHEMAS[0][1])


def test_chat_json_object_parses(server):
    out = server.openai_client().chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": "Describe a cat as a JSON object with keys name, age and color.",
            }
        ],
        response_format={"type": "json_object"},
        max_tokens=150,
        temperature=0,
    )
    assert isinstance(json.loads(out.choices[0].message.content), dict)


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=30)
    country: str = pydantic.Field(max_length=30)
    population: int = pydantic.Field(ge=0, le=50_000_000)


def test_sdk_parse_with_a_pydantic_model(server):
    client = server.openai_client()
    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    out = parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me about Paris."}],
        response_format=City,
        max_tokens=120,
        temperature=0.7,
        seed=3,
    )
    city = out.choices[0].message.parsed
    assert isinstance(city, City)


@pytest.mark.parametrize("tool_choice", ["named", "required"])
def test_tool_calls_validate_and_stream_to_the_same_call(server, tool_choice):
    client = server.openai_client()
    choice = (
        {"type": "function", "function": {"name": "get_weather"}}
        if tool_choice == "named"
        else "required"
    )
    kwargs = dict(model=MODEL, messages=ASK, tools=[WEATHER, ADD], tool_choice=choice)
    kwargs.update(max_tokens=120, temperature=0)
    out = client.chat.completions.create(**kwargs).choices[0]
    assert out.finish_reason == ("stop" if tool_choice == "named" else "tool_calls")
    assert out.message.content is None and out.message.tool_calls
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, ADD)}
    for call in out.message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
    if tool_choice == "named":
        assert [c.function.name for c in out.message.tool_calls] == ["get_weather"]
    calls: dict[int, dict] = {}
    finish = None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        delta = chunk.choices[0].delta
        assert not delta.content
        for call in delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
            entry["name"] += call.function.name or ""
            entry["arguments"] += call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == out.finish_reason
    assert [calls[i] for i in sorted(calls)] == [
        {"name": c.function.name, "arguments": c.function.arguments} for c in out.message.tool_calls
    ]


def test_auto_tool_choice_returns_a_message_the_sdk_reads(server):
    out = server.openai_client().chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], max_tokens=40, temperature=0
    )
    choice = out.choices[0]
    # The small model answers in prose here; the reply is content, with no calls parsed.
    assert choice.message.content and choice.message.tool_calls in (None, [])
    assert choice.finish_reason in ("stop", "length")


BAD = [
    (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "foo"}},
            }
        },
        "response_format",
    ),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"guided_json": {"not": {"type": "string"}}}, "guided_json"),
    ({"guided_json": "{not json"}, "guided_json"),
    ({"guided_regex": "(("}, "guided_regex"),
    ({"guided_grammar": "start: nothing_here"}, "guided_grammar"),
    ({"guided_choice": []}, "guided_choice"),
    ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_regex, guided_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    (
        {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        "tool_choice",
    ),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
    (
        {
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "bogus"}}}
            ]
        },
        "tools[0].function.parameters",
    ),
    (
        {"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
        "response_format",
    ),
]


@pytest.mark.parametrize(("fields", "param"), BAD)
def test_bad_schemas_and_tools_are_400s_naming_the_field(server, fields, param):
    import httpx

    body = {"model": MODEL, "messages": ASK, "max_tokens": 4, **fields}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert error["message"]
