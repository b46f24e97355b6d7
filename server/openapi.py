"""The OpenAPI document (``/openapi.json``): what the routes really accept and answer.

FastAPI's default document would promise a 422 (we answer validation errors with 400), leave
the responses untyped and say nothing about the API key. Routes declare their responses with
:func:`responses`; :func:`install_openapi` then fixes what only the running config knows.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from skipdecode.server.config import ServerConfig
from skipdecode.server.middleware import PROTECTED_PREFIXES
from skipdecode.server.responses import ErrorResponse

_REQUEST_BODIES = (
    "CompletionRequest",
    "ChatCompletionRequest",
    "TokenizeRequest",
    "DetokenizeRequest",
)
_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
# With "stream": true, each server-sent event (OpenAPI 3.1: the schema describes one event).
_SSE_EVENT = {
    "type": "object",
    "properties": {
        "data": {
            "type": "string",
            "description": "a JSON chunk (the streamed object, or an error), finally [DONE]",
        }
    },
    "required": ["data"],
}
_ERROR_TEXT = {
    400: "Invalid request: a field of the wrong type or out of range, or a prompt that cannot fit",
    401: "Missing or wrong API key",
    404: "Unknown model",
    413: "Request body over --max-request-bytes",
    500: "An engine step failed while running this request",
    503: "Queue full, engine stopped or server draining (with Retry-After)",
}


def responses(ok: type[BaseModel] | None, *errors: int, stream: bool = False) -> dict:
    """A route's ``responses``: the 200 body (JSON, or SSE too) and its error statuses."""
    documented: dict[int | str, dict[str, Any]] = {}
    if ok is not None:
        documented[200] = {"model": ok}
        if stream:
            documented[200]["content"] = {"text/event-stream": {"schema": _SSE_EVENT}}
    for status in errors:
        documented[status] = {"model": ErrorResponse, "description": _ERROR_TEXT[status]}
    return documented


def install_openapi(app: FastAPI, config: ServerConfig) -> None:
    """Serve the corrected document at ``/openapi.json`` (built once, on first request)."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, config)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build_openapi(app: FastAPI, config: ServerConfig) -> dict:
    """FastAPI's document, corrected: 400s not 422s, the key, model names, the vocabulary."""
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            operation["responses"].pop("422", None)  # validation errors are 400s
            if config.api_key is not None and path.startswith(PROTECTED_PREFIXES):
                operation["security"] = [{"bearer": []}]
                operation["responses"]["401"] = {
                    "description": _ERROR_TEXT[401],
                    "content": {"application/json": {"schema": _ERROR_REF}},
                }
    if config.api_key is not None:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    # `model` must be a served name (else 404): say which.
    names = {"type": "string", "enum": list(config.served_model_names)}
    client = getattr(app.state, "client", None)  # set once the engine runs
    for name in _REQUEST_BODIES:
        schemas[name]["properties"]["model"]["anyOf"] = [names, {"type": "null"}]
        if client is not None:
            _bound_token_ids(schemas[name], client.vocab_size)
    return schema


def _bound_token_ids(node: Any, vocab_size: int) -> None:
    """Token ids (the only integer arrays in request bodies) must be in the vocabulary."""
    if isinstance(node, dict):
        items = node.get("items")
        if isinstance(items, dict) and items.get("type") == "integer":
            items["maximum"] = vocab_size - 1
        for value in node.values():
            _bound_token_ids(value, vocab_size)
    elif isinstance(node, list):
        for value in node:
            _bound_token_ids(value, vocab_size)
