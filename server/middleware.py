"""ASGI middleware in front of every route: the request-size limit and the API key."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skipdecode.server.errors import APIError

PROTECTED_PREFIXES = ("/v1/", "/tokenize", "/detokenize", "/internal/")


class BodySizeLimitMiddleware:
    """413 (OpenAI error shape) for a request body over ``max_bytes``.

    A declared ``Content-Length`` over the limit is refused before anything is read; otherwise
    the body is read up to the limit and handed on in one piece, so a chunked upload cannot
    grow past it either. The route reads the same body, and later ``receive()`` calls (the
    disconnect watch) go to the connection as before.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        chunks, num_bytes = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left while sending
                return
            chunk = message.get("body", b"")
            num_bytes += len(chunk)
            if num_bytes > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body: Message | None = {"type": "http.request", "body": b"".join(chunks)}

        async def replay() -> Message:
            nonlocal body
            if body is not None:
                message, body = body, None
                return message
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body over the server's limit of {self.max_bytes} bytes"
        error = APIError(413, message, code="request_too_large")
        await error.response()(scope, receive, send)


class APIKeyMiddleware:
    """401 on the API paths unless ``Authorization: Bearer <key>`` matches (constant time)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PROTECTED_PREFIXES):
            headers = dict(scope["headers"])
            scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode("latin-1"), self._key
            ):
                error = APIError(401, "Incorrect API key provided.", code="invalid_api_key")
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)
