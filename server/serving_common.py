"""Pieces shared by completions and chat: choices, collection, usage, SSE framing."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import Request
from fastapi.responses import StreamingResponse

from skipdecode.outputs import RequestOutput
from skipdecode.scheduler import StructuredOutput
from skipdecode.server.choice_stream import ChoiceSpec, ChoiceStream
from skipdecode.server.engine_client import EngineClient
from skipdecode.server.errors import APIError, as_invalid_request, from_engine_error
from skipdecode.server.protocol import SamplingRequest


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def build_specs(
    base_id: str,
    prompts_ids: list[list[int]],
    body: SamplingRequest,
    max_tokens: list[int],
    logprobs: int | None,
    structured_output: StructuredOutput | None = None,
) -> list[ChoiceSpec]:
    """``n`` choices per prompt, indexed prompt-major; choice ``i`` samples with ``seed + i``."""
    specs = []
    for prompt_index, (prompt_ids, prompt_max_tokens) in enumerate(zip(prompts_ids, max_tokens)):
        for i in range(body.n):
            index = prompt_index * body.n + i
            with as_invalid_request():
                params = body.sampling_params(prompt_max_tokens, logprobs, i, structured_output)
            specs.append(ChoiceSpec(index, prompt_index, prompt_ids, params, f"{base_id}-{index}"))
    return specs


async def output_constraint(
    client: EngineClient,
    body: SamplingRequest,
    tool_constraint: StructuredOutput | None = None,
    tool_schemas: list[tuple[str, StructuredOutput]] = (),
) -> StructuredOutput | None:
    """The request's output constraint, compiled once here so that a schema, regex or grammar
    that cannot be used is a 400 naming its field (not an error per choice later)."""
    try:
        found = body.output_constraint()
    except ValueError as exc:
        raise APIError(400, str(exc), param=str(exc).split(":")[0]) from exc
    if found is not None and tool_constraint is not None:
        raise APIError(
            400,
            f"{found[1]} cannot be combined with a required or named tool_choice",
            param=found[1],
        )
    checks = [*tool_schemas, *([] if found is None else [(found[1], found[0])])]
    for field, constraint in checks:
        await client.check_constraint(constraint, field)
    if tool_constraint is not None:
        await client.check_constraint(tool_constraint, "tools")
        return tool_constraint
    return None if found is None else found[0]


def check_stream_options(body: SamplingRequest) -> None:
    if body.stream_options is not None and not body.stream:
        raise APIError(
            400, "stream_options is only allowed with stream=true", param="stream_options"
        )


async def collect(stream: ChoiceStream, request: Request) -> list[RequestOutput]:
    """Final output of every choice; a client that disconnects first aborts them all."""

    async def finals() -> list[RequestOutput]:
        results: dict[int, RequestOutput] = {}
        async for index, output in stream:
            results[index] = output
        return [results[spec.index] for spec in stream.specs]

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work = asyncio.ensure_future(finals())
    watch = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            raise APIError(499, "client disconnected")
        return work.result()
    finally:
        watch.cancel()
        work.cancel()
        await stream.aclose()


def usage(specs: list[ChoiceSpec], outputs: list[RequestOutput]) -> dict:
    """OpenAI's usage plus the SkipDecode counters, summed over choices.

    ``theoretical_speedup`` is token-weighted: all layers the generated tokens could have run,
    over the layers they did run.
    """
    prompt_tokens = sum(len(ids) for ids in {s.prompt_index: s.prompt_ids for s in specs}.values())
    completion_tokens = sum(o.num_generated_tokens for o in outputs)
    computed = sum(o.num_layers_computed for o in outputs)
    skipped = sum(o.num_layers_skipped for o in outputs)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "layers_computed": computed,
        "layers_skipped": skipped,
        "theoretical_speedup": (computed + skipped) / computed if computed else 1.0,
    }


def sse_response(
    events: AsyncIterator[dict], on_close: Callable[[], Awaitable[None]]
) -> StreamingResponse:
    """Server-sent events: one ``data:`` line per chunk, an error chunk if the engine fails
    mid-stream, then ``data: [DONE]``. ``on_close`` runs however the response ends, even if
    the client left before the first chunk (when ``events`` never starts)."""

    async def body() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield _frame(event)
        except Exception as exc:  # the status line is sent: report it in the stream
            yield _frame(from_engine_error(exc).body())
        yield "data: [DONE]\n\n"

    return _EventStream(body(), on_close)


class _EventStream(StreamingResponse):
    media_type = "text/event-stream"

    def __init__(
        self, content: AsyncIterator[str], on_close: Callable[[], Awaitable[None]]
    ) -> None:
        super().__init__(content, headers={"Cache-Control": "no-cache"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()


def _frame(event: dict) -> str:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
