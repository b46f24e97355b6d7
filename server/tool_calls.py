"""Tool calls on chat completions: prompt rendering, the constraint per ``tool_choice``, parsing.

The reply format is the Hermes one (used by Qwen2.5, Hermes 2/3 and others): each call is a
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` block. Templates that render
``tools`` themselves get them as ``apply_chat_template(..., tools=...)``; for the others (SmolLM2
among them) the tools and that format are described in a system message written here.

``tool_choice``:
- ``none``: no tools in the prompt and no parsing;
- ``auto`` (the default with tools): free text, parsed for ``<tool_call>`` blocks;
- ``required``: the reply is constrained to a JSON array of ``{"name", "arguments"}`` calls,
  each ``arguments`` by its function's schema (one call if ``parallel_tool_calls`` is false);
- a named function: the reply is constrained to that function's ``arguments`` object.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from skipdecode.scheduler import StructuredOutput
from skipdecode.server.protocol import ChatCompletionRequest, ChatMessage

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_NO_ARGUMENTS = {"type": "object", "properties": {}}
_TOOL_PROMPT = (
    "You may call functions to answer. The functions you can call, as JSON schemas:\n"
    "<tools>\n{tools}\n</tools>\n"
    "To call a function, reply with one block per call:\n"
    '<tool_call>\n{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}\n'
    "</tool_call>"
)


@dataclass
class ToolPlan:
    """What a chat request's ``tools`` and ``tool_choice`` mean for prompt, output and parsing."""

    mode: str  # "none" (also: no tools), "auto", "required" or "named"
    tools: list[dict] = field(default_factory=list)  # OpenAI tool dicts, for the template
    function_name: str | None = None  # mode "named"
    constraint: StructuredOutput | None = None  # modes "required" and "named"

    @property
    def parses_calls(self) -> bool:
        return self.mode in ("auto", "required", "named")


def plan_tools(body: ChatCompletionRequest) -> ToolPlan:
    """ValueError (naming ``tools`` or ``tool_choice``) for a choice that does not fit."""
    choice = body.tool_choice
    if not body.tools:
        if choice not in (None, "none"):
            raise ValueError("tool_choice: needs tools")
        return ToolPlan("none")
    tools = [tool.model_dump(exclude_none=True) for tool in body.tools]
    names = [tool.function.name for tool in body.tools]
    if len(set(names)) != len(names):
        raise ValueError("tools: function names must be unique")
    if choice == "none":
        return ToolPlan("none")
    if choice in (None, "auto"):
        return ToolPlan("auto", tools)
    params = {tool.function.name: tool.function.parameters or _NO_ARGUMENTS for tool in body.tools}
    if choice == "required":
        calls: dict[str, Any] = {"type": "array", "minItems": 1, "items": _call_schema(params)}
        if not body.parallel_tool_calls:
            calls["maxItems"] = 1
        return ToolPlan("required", tools, constraint=StructuredOutput.json_schema(calls))
    name = choice.function.name
    if name not in params:
        raise ValueError(f"tool_choice: no tool named {name!r} in tools")
    return ToolPlan("named", tools, name, StructuredOutput.json_schema(params[name]))


def _call_schema(params: dict[str, dict]) -> dict:
    return {
        "anyOf": [
            {
                "type": "object",
                "properties": {"name": {"const": name}, "arguments": schema},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for name, schema in params.items()
        ]
    }


def function_schemas(body: ChatCompletionRequest) -> list[tuple[str, StructuredOutput]]:
    """Each tool's parameter schema as a constraint, to be checked even when none is enforced."""
    return [
        (f"tools[{i}].function.parameters", StructuredOutput.json_schema(tool.function.parameters))
        for i, tool in enumerate(body.tools or [])
        if tool.function.parameters is not None
    ]


def template_messages(
    messages: list[ChatMessage], plan: ToolPlan, template_has_tools: bool
) -> list[dict]:
    """The conversation as the chat template wants it (``developer`` is OpenAI's ``system``).

    A template without tool support sees earlier calls as ``<tool_call>`` blocks, tool results
    as user turns in ``<tool_response>`` tags, and the tools in a system message.
    """
    out: list[dict] = []
    for m in messages:
        role = "system" if m.role == "developer" else m.role
        entry: dict[str, Any] = {"role": role, "content": m.text()}
        if m.tool_calls and template_has_tools:
            entry["tool_calls"] = [_template_call(call) for call in m.tool_calls]
        elif m.tool_calls:
            blocks = [_call_block(c.function.name, c.function.arguments) for c in m.tool_calls]
            entry["content"] = "\n".join([entry["content"], *blocks]).strip()
        if role == "tool" and template_has_tools:
            entry["tool_call_id"] = m.tool_call_id
        elif role == "tool":
            entry = {"role": "user", "content": f"<tool_response>\n{m.text()}\n</tool_response>"}
        out.append(entry)
    if plan.mode != "none" and not template_has_tools:
        out = _with_tool_prompt(out, plan.tools)
    return out


def _arguments_value(arguments: str) -> Any:
    """A call's ``arguments`` JSON text as a value (the text itself if it is not JSON)."""
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments


def _template_call(call: Any) -> dict:
    arguments = _arguments_value(call.function.arguments)
    return {"type": "function", "function": {"name": call.function.name, "arguments": arguments}}


def _call_block(name: str, arguments: str) -> str:
    body = json.dumps({"name": name, "arguments": _arguments_value(arguments)}, ensure_ascii=False)
    return f"{CALL_OPEN}\n{body}\n{CALL_CLOSE}"


def _with_tool_prompt(messages: list[dict], tools: list[dict]) -> list[dict]:
    prompt = _TOOL_PROMPT.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
    if messages and messages[0]["role"] == "system":
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{prompt}".strip()}
        return [first, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def tool_call(name: str, arguments: str, call_id: str | None = None) -> dict:
    """One entry of ``message.tool_calls``."""
    return {
        "id": call_id or new_call_id(),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def parse_reply(text: str, plan: ToolPlan) -> tuple[str | None, list[dict]]:
    """``(content, tool_calls)`` of a finished reply. Text that does not parse as the mode's
    calls stays content (a constrained reply cut short by ``max_tokens`` is one such case)."""
    if plan.mode == "named":  # the reply is the arguments, kept as generated (streamed so)
        try:
            json.loads(text)
        except json.JSONDecodeError:
            return text, []
        return None, [tool_call(plan.function_name, text)]
    if plan.mode == "required":
        return _constrained_calls(
            text, lambda: [(c["name"], c["arguments"]) for c in json.loads(text)]
        )
    if plan.mode != "auto" or CALL_OPEN not in text:
        return text, []
    names = {tool["function"]["name"] for tool in plan.tools}
    calls = []
    for block in _CALL_BLOCK.findall(text[text.index(CALL_OPEN) :]):
        try:
            call = json.loads(block)
            name, arguments = call["name"], call.get("arguments", call.get("parameters", {}))
        except (json.JSONDecodeError, KeyError, TypeError):
            return text, []
        if name not in names:
            return text, []
        calls.append(tool_call(name, json.dumps(arguments, ensure_ascii=False)))
    content = text[: text.index(CALL_OPEN)].rstrip()
    return (content or None), calls


def _constrained_calls(text: str, read) -> tuple[str | None, list[dict]]:
    try:
        pairs = read()
    except (json.JSONDecodeError, KeyError, TypeError):
        return text, []
    return None, [tool_call(name, json.dumps(args, ensure_ascii=False)) for name, args in pairs]


def finish_reason(plan: ToolPlan, calls: list[dict], reason: str | None) -> str | None:
    """OpenAI's: ``tool_calls`` when the model called tools on its own or had to; a named
    function ends with ``stop``; a cut-off or aborted reply keeps its reason."""
    if calls and plan.mode in ("auto", "required") and reason == "stop":
        return "tool_calls"
    return reason
