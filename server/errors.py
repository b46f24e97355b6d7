"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Route code raises :class:`APIError` (or lets the engine's exceptions through); the handlers
installed here turn everything into that body with the right status code.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from skipdecode.async_engine import EngineDeadError, QueueFullError, StepFailedError
from skipdecode.server.protocol import SkipRequest

logger = logging.getLogger(__name__)
RETRY_AFTER_S = 1  # what a 503 asks clients to wait before retrying
_FASTAPI_PARSE_ERROR = "There was an error parsing the body"
_FIELD = re.compile(r"^(SamplingParams|SkipConfig)\.(\w+)")


class APIError(Exception):
    """An error a client should see, with its HTTP status and OpenAI error fields."""

    def __init__(
        self,
        status_code: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return _ErrorJSON(self.body(), status_code=self.status_code, headers=self.headers)


class _ErrorJSON(JSONResponse):
    """ASCII-escaped JSON: a message that quotes the request stays renderable whatever it holds
    (``ensure_ascii=False`` fails on a lone surrogate)."""

    def render(self, content: object) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def invalid_request(exc: ValueError, param: str | None = None) -> APIError:
    """A 400 for a ValueError from validation; ``param`` is read from the message if absent."""
    message = str(exc)
    match = _FIELD.match(message)
    if param is None and match:
        param = match.group(2) if match.group(1) == "SamplingParams" else f"skip.{match.group(2)}"
    return APIError(400, message, param=param)


@contextmanager
def as_invalid_request(param: str | None = None) -> Iterator[None]:
    """Turn ValueErrors raised inside the block into 400s."""
    try:
        yield
    except ValueError as exc:
        raise invalid_request(exc, param) from exc


def unavailable(message: str) -> APIError:
    return APIError(
        503,
        message,
        type="service_unavailable",
        code="service_unavailable",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def from_engine_error(exc: BaseException) -> APIError:
    """The client-facing form of an exception from the AsyncEngine (before or mid-request)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, QueueFullError):
        return unavailable(f"server busy: {exc}; retry later")
    if isinstance(exc, EngineDeadError):
        return unavailable(f"engine unavailable: {exc}")
    if isinstance(exc, ValueError):
        return invalid_request(exc)
    if isinstance(exc, StepFailedError):
        return APIError(500, str(exc), type="server_error", code="step_failed")
    logger.error("unexpected error", exc_info=exc)
    return APIError(500, f"internal error: {type(exc).__name__}", type="server_error")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if any(err.get("type") == "json_invalid" for err in errors):
        return "request body is not valid JSON", None
    parts: list[str] = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        # Unions report each alternative's path (prompt.str, prompt.list[int].0): drop the tags.
        field = ".".join(p for p in loc if not _is_union_tag(p))
        parts.append(f"{field or 'request body'}: {err.get('msg')}")
    first_loc = [str(p) for p in errors[0].get("loc", ()) if p != "body"] if errors else []
    return "; ".join(dict.fromkeys(parts)), _param(first_loc)


def _param(loc: list[str]) -> str | None:
    """The top-level field, or ``skip.<knob>`` for a schedule knob (as SkipConfig names it)."""
    if not loc:
        return None
    if loc[0] == "skip" and len(loc) > 1 and loc[1] in SkipRequest.model_fields:
        return f"skip.{loc[1]}"
    return loc[0]


def _is_union_tag(part: str) -> bool:
    return (
        "[" in part
        or part.startswith(("constrained-", "function-"))
        or part in ("str", "int", "float", "bool", "list", "dict")
    )


async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    message, param = _validation_message(exc)
    return APIError(400, message, param=param).response()


async def _on_api_error(request: Request, exc: APIError) -> JSONResponse:
    return exc.response()


async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    headers = getattr(exc, "headers", None)
    message = str(exc.detail)
    if message == _FASTAPI_PARSE_ERROR:  # json.loads failed for another reason than syntax
        message = (
            "request body is not JSON we can parse (invalid UTF-8, too deep, or too long a number)"
        )
    return APIError(exc.status_code, message, type=kind, headers=headers).response()


async def _on_engine_error(request: Request, exc: Exception) -> JSONResponse:
    return from_engine_error(exc).response()


async def _on_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # A bug: still a 500 in OpenAI's shape (Starlette re-raises it afterwards, so the
    # traceback reaches the server log).
    return APIError(500, f"internal error: {type(exc).__name__}", type="server_error").response()


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(APIError, _on_api_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    for exc_type in (QueueFullError, EngineDeadError, StepFailedError):
        app.add_exception_handler(exc_type, _on_engine_error)
    app.add_exception_handler(Exception, _on_unexpected_error)
