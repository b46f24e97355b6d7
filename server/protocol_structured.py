"""Request fields for structured outputs and tool calls (OpenAI's, plus vLLM's ``guided_*``).

Each field here only describes the constraint; :func:`constraint_of` picks the one a request
carries (at most one) and names the field, so a schema that llguidance cannot compile gets a 400
that points at it. Tools are turned into constraints in ``server/tool_calls.py``.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from skipdecode.scheduler import StructuredOutput

FUNCTION_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function names
MAX_TOOLS = 128
MAX_CHOICES = 256


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True)


class JsonSchemaFormat(_Strict):
    """``response_format.json_schema``: a named schema (``strict`` is accepted; the grammar
    always enforces the schema)."""

    name: str = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    model_config = ConfigDict(strict=True, populate_by_name=True)


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputsRequest(_Strict):
    """vLLM's ``structured_outputs`` object: exactly one of its fields."""

    model_config = ConfigDict(strict=True, extra="forbid")

    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = Field(None, min_length=1, max_length=MAX_CHOICES)
    grammar: str | None = None
    json_object: bool | None = None


class FunctionDefinition(_Strict):
    name: str = Field(pattern=FUNCTION_NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema; None: no arguments
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str = Field(min_length=1)


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ToolCallFunction(_Strict):
    name: str
    arguments: str  # JSON text, as OpenAI sends it back


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


def constraint_of(body: Any) -> tuple[StructuredOutput, str] | None:
    """The request's constraint and the field that set it; ValueError if it sets two."""
    found: list[tuple[StructuredOutput, str]] = []
    extra = body.model_extra or {}
    response_format: ResponseFormat | None = body.response_format
    if response_format is not None and response_format.type != "text":
        found.append(
            (_named("response_format", _from_response_format, response_format), "response_format")
        )
    for name in ("guided_json", "guided_regex", "guided_choice", "guided_grammar"):
        value = getattr(body, name)
        if value is not None:
            found.append((_named(name, _guided, name, value), name))
    if body.structured_outputs is not None:
        constraint = _named("structured_outputs", _from_structured_outputs, body.structured_outputs)
        found.append((constraint, "structured_outputs"))
    if extra.get("guided_decoding_backend") not in (None, "llguidance", "auto"):
        raise ValueError("guided_decoding_backend: only llguidance is available")
    if len(found) > 1:
        names = ", ".join(name for _, name in found)
        raise ValueError(f"{names}: a request may carry only one output constraint")
    return found[0] if found else None


def _named(field: str, build: Any, *args: Any) -> StructuredOutput:
    """``build(*args)``, with a ValueError's message prefixed by ``field``."""
    try:
        return build(*args)
    except ValueError as exc:
        message = str(exc)
        raise ValueError(
            message if message.startswith(f"{field}:") else f"{field}: {message}"
        ) from exc


def _from_response_format(response_format: ResponseFormat) -> StructuredOutput:
    if response_format.type == "json_object":
        return StructuredOutput.json_object()
    spec = response_format.json_schema
    if spec is None:
        raise ValueError("json_schema is required when type is json_schema")
    return StructuredOutput.json_schema(spec.schema_ if spec.schema_ is not None else {})


def _guided(name: str, value: Any) -> StructuredOutput:
    if name == "guided_json":
        return StructuredOutput.json_schema(_schema_text(value, name))
    if name == "guided_regex":
        return StructuredOutput.regex(value)
    if name == "guided_choice":
        return StructuredOutput.choice(value)
    return StructuredOutput.lark(value)


def _from_structured_outputs(request: StructuredOutputsRequest) -> StructuredOutput:
    kinds = [
        name
        for name in ("json_", "regex", "choice", "grammar", "json_object")
        if getattr(request, name) not in (None, False)
    ]
    if len(kinds) != 1:
        raise ValueError("structured_outputs must set exactly one of json, regex, choice, grammar")
    kind = kinds[0]
    if kind == "json_":
        return StructuredOutput.json_schema(_schema_text(request.json_, "structured_outputs.json"))
    if kind == "json_object":
        return StructuredOutput.json_object()
    return _guided(f"guided_{kind}", getattr(request, kind))


def _schema_text(value: dict | str, field: str) -> str:
    if isinstance(value, dict):
        return json.dumps(value)
    try:
        json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{field}: not valid JSON: {exc}") from exc
    return value
