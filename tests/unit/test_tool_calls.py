"""Tool calls without a model: tool_choice plans, prompt messages, reply parsing, and streamed
deltas that add up to the non-streamed message."""

from __future__ import annotations

import json

import pytest

from skipdecode.server.chat_reply import ReplyStream
from skipdecode.server.protocol import ChatCompletionRequest
from skipdecode.server.tool_calls import (
    finish_reason,
    parse_reply,
    plan_tools,
    template_messages,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
NOW = {"type": "function", "function": {"name": "now"}}
USER = [{"role": "user", "content": "Weather in Paris?"}]


def body(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": USER, **fields})


def test_plans_per_tool_choice():
    assert plan_tools(body()).mode == "none"
    assert plan_tools(body(tools=[WEATHER], tool_choice="none")).mode == "none"
    auto = plan_tools(body(tools=[WEATHER, NOW]))
    assert auto.mode == "auto" and auto.constraint is None
    assert [t["function"]["name"] for t in auto.tools] == ["get_weather", "now"]
    named = plan_tools(
        body(tools=[WEATHER, NOW], tool_choice={"type": "function", "function": {"name": "now"}})
    )
    assert named.function_name == "now"
    assert json.loads(named.constraint.spec) == {"type": "object", "properties": {}}
    required = plan_tools(body(tools=[WEATHER], tool_choice="required"))
    schema = json.loads(required.constraint.spec)
    assert schema["minItems"] == 1 and "maxItems" not in schema
    call = schema["items"]["anyOf"][0]
    assert call["properties"]["name"] == {"const": "get_weather"}
    assert call["properties"]["arguments"] == WEATHER["function"]["parameters"]
    single = plan_tools(body(tools=[WEATHER], tool_choice="required", parallel_tool_calls=False))
    assert json.loads(single.constraint.spec)["maxItems"] == 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tool_choice": "required"}, "tool_choice: needs tools"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice: no tool named 'x'",
        ),
        ({"tools": [WEATHER, WEATHER]}, "tools: function names must be unique"),
    ],
)
def test_plans_refuse_choices_that_do_not_fit(fields, message):
    with pytest.raises(ValueError, match=message):
        plan_tools(body(**fields))


def test_template_without_tools_gets_them_in_a_system_message():
    history = [
        {"role": "developer", "content": "Be brief."},
        *USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
    ]
    request = body(messages=history, tools=[WEATHER])
    plan = plan_tools(request)
    plain = template_messages(request.messages, plan, template_has_tools=False)
    assert plain[0]["role"] == "system"
    assert plain[0]["content"].startswith("Be brief.")
    assert '"name": "get_weather"' in plain[0]["content"] and "<tool_call>" in plain[0]["content"]
    assert plain[2] == {
        "role": "assistant",
        "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call>",
    }
    assert plain[3] == {"role": "user", "content": "<tool_response>\n18 C\n</tool_response>"}
    native = template_messages(request.messages, plan, template_has_tools=True)
    assert native[0] == {"role": "system", "content": "Be brief."}
    assert native[2]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": {"city": "Paris"},
    }
    assert native[3] == {"role": "tool", "content": "18 C", "tool_call_id": "call_1"}
    unused = template_messages(request.messages, plan_tools(body(messages=history)), False)
    assert unused[0] == {"role": "system", "content": "Be brief."}


AUTO = plan_tools(body(tools=[WEATHER, NOW]))
REPLIES = {
    "plain": ("It is sunny.", "It is sunny.", []),
    "one call": (
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call>",
        "Let me check.",
        [("get_weather", {"city": "Paris"})],
    ),
    "two calls, unclosed": (
        '<tool_call>{"name": "now", "arguments": {}}</tool_call>\n<tool_call>\n'
        '{"name": "get_weather", "parameters": {"city": "Rome"}}',
        None,
        [("now", {}), ("get_weather", {"city": "Rome"})],
    ),
    "unknown tool": ('<tool_call>{"name": "rm", "arguments": {}}</tool_call>', None, None),
    "bad json": ('<tool_call>{"name": "now", "arguments": {</tool_call>', None, None),
}


@pytest.mark.parametrize("name", list(REPLIES))
def test_auto_replies_parse_into_calls_or_stay_text(name):
    text, content, calls = REPLIES[name]
    got_content, got_calls = parse_reply(text, AUTO)
    if calls is None:  # not a valid call: the reply stays text
        assert (got_content, got_calls) == (text, [])
        return
    assert got_content == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got_calls] == (
        calls
    )
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in got_calls)
    assert finish_reason(AUTO, got_calls, "stop") == ("tool_calls" if calls else "stop")
    assert finish_reason(AUTO, got_calls, "length") == "length"


def _streamed(text: str, plan) -> tuple[str | None, list[dict]]:
    """Feed ``text`` in growing prefixes of 1..3 characters and assemble the deltas as the
    openai SDK does."""
    reply, content, calls, end = ReplyStream(plan), "", {}, 0
    while end < len(text):
        end = min(len(text), end + 1 + end % 3)
        delta = reply.delta(text[:end], end == len(text))
        content += delta.get("content", "")
        for call in delta.get("tool_calls", []):
            entry = calls.setdefault(call["index"], {"name": "", "arguments": "", "id": None})
            entry["id"] = call.get("id", entry["id"])
            entry["name"] += call.get("function", {}).get("name", "")
            entry["arguments"] += call.get("function", {}).get("arguments", "")
    assembled = [
        {
            "id": c["id"],
            "type": "function",
            "function": {"name": c["name"], "arguments": c["arguments"]},
        }
        for _, c in sorted(calls.items())
    ]
    assert assembled == reply.calls
    return (content or None), assembled


@pytest.mark.parametrize("name", list(REPLIES))
def test_streamed_auto_replies_add_up_to_the_parsed_reply(name):
    text = REPLIES[name][0]
    content, calls = parse_reply(text, AUTO)
    got_content, got_calls = _streamed(text, AUTO)
    assert got_content == content
    assert [c["function"] for c in got_calls] == [c["function"] for c in calls]


def test_streamed_auto_reply_holds_back_a_possible_tag():
    reply = ReplyStream(AUTO)
    assert reply.delta("Checking <tool", False) == {"content": "Checking"}
    assert reply.delta("Checking <tool time", False) == {"content": " <tool time"}


@pytest.mark.parametrize(
    ("tool_choice", "text", "expected"),
    [
        ({"type": "function", "function": {"name": "get_weather"}}, '{"city":"Oslo"}', None),
        (
            "required",
            '[{"name":"now","arguments":{}},{"name":"get_weather","arguments":{"city":"Oslo"}}]',
            [("now", "{}"), ("get_weather", '{"city": "Oslo"}')],
        ),
    ],
)
def test_constrained_replies_stream_to_the_same_calls(tool_choice, text, expected):
    plan = plan_tools(body(tools=[WEATHER, NOW], tool_choice=tool_choice))
    content, calls = parse_reply(text, plan)
    assert content is None
    pairs = [(c["function"]["name"], c["function"]["arguments"]) for c in calls]
    assert pairs == (expected or [("get_weather", text)])
    got_content, got_calls = _streamed(text, plan)
    assert got_content is None
    assert [c["function"] for c in got_calls] == [c["function"] for c in calls]
    expected_reason = "stop" if plan.mode == "named" else "tool_calls"
    assert finish_reason(plan, calls, "stop") == expected_reason


def test_constrained_reply_cut_short_stays_text():
    plan = plan_tools(body(tools=[WEATHER], tool_choice="required"))
    assert parse_reply('[{"name":"get_wea', plan) == ('[{"name":"get_wea', [])
