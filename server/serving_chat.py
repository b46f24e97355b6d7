"""POST /v1/chat/completions: the tokenizer's chat template, then the completions machinery."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from skipdecode.outputs import RequestOutput
from skipdecode.server.choice_stream import ChoiceStream
from skipdecode.server.engine_client import EngineClient
from skipdecode.server.errors import APIError
from skipdecode.server.logprobs import chat_logprobs
from skipdecode.server.protocol import ChatCompletionRequest
from skipdecode.server.serving_common import (
    build_specs,
    check_stream_options,
    collect,
    new_id,
    now,
    sse_response,
    usage,
)


def _num_logprobs(body: ChatCompletionRequest) -> int | None:
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs requires logprobs=true", param="top_logprobs")
    return (body.top_logprobs or 0) if body.logprobs else None


async def create_chat_completion(
    client: EngineClient, body: ChatCompletionRequest, request: Request
) -> Response:
    client.check_model(body.model)
    check_stream_options(body)
    logprobs = _num_logprobs(body)
    prompt = await client.render_chat(body.template_messages())
    # The template already wrote the special tokens (e.g. <|im_start|>): add none.
    prompt_ids = await client.tokenize_text(prompt, add_special_tokens=False)
    max_tokens = client.default_max_tokens(body.requested_max_tokens, len(prompt_ids))
    skip = client.skip_config(body.skip)
    response_id = new_id("chatcmpl")
    specs = build_specs(response_id, [prompt_ids], body, [max_tokens], logprobs)
    stream = await client.open(specs, skip)
    meta = {"id": response_id, "created": now(), "model": body.model or client.config.model_name}
    if body.stream:
        return sse_response(_chunks(client, body, stream, meta), stream.aclose)
    outputs = await collect(stream, request)
    choices = [
        {
            "index": spec.index,
            "message": {"role": "assistant", "content": output.text},
            "logprobs": _logprobs(client, output, 0) if body.logprobs else None,
            "finish_reason": output.finish_reason,
            "stop_reason": output.stop_reason,
        }
        for spec, output in zip(specs, outputs)
    ]
    return JSONResponse(
        {**meta, "object": "chat.completion", "choices": choices, "usage": usage(specs, outputs)}
    )


def _logprobs(client: EngineClient, output: RequestOutput, start: int) -> dict:
    return chat_logprobs(
        client.tokenizer, output.token_ids[start:], (output.logprobs or [])[start:]
    )


async def _chunks(
    client: EngineClient, body: ChatCompletionRequest, stream: ChoiceStream, meta: dict
) -> AsyncIterator[dict]:
    """A role chunk per choice, then content deltas, then a chunk with the finish reason."""
    meta = {**meta, "object": "chat.completion.chunk"}
    for spec in stream.specs:
        delta = {"role": "assistant", "content": ""}
        yield {**meta, "choices": [_chunk_choice(spec.index, delta, None, None)]}
    sent_chars = {spec.index: 0 for spec in stream.specs}
    sent_tokens = {spec.index: 0 for spec in stream.specs}
    finals: dict[int, RequestOutput] = {}
    try:
        async for index, output in stream:
            text = output.text[sent_chars[index] :]
            sent_chars[index] = len(output.text)
            logprobs = None
            if body.logprobs:
                logprobs = _logprobs(client, output, sent_tokens[index])
                sent_tokens[index] = len(output.logprobs or [])
            if output.finished:
                finals[index] = output
            elif not text and not (logprobs and logprobs["content"]):
                continue
            delta = {"content": text} if text else {}
            choice = _chunk_choice(index, delta, logprobs, output)
            yield {**meta, "choices": [choice]}
        if body.include_usage_in_stream:
            outputs = [finals[spec.index] for spec in stream.specs]
            yield {**meta, "choices": [], "usage": usage(stream.specs, outputs)}
    finally:
        await stream.aclose()


def _chunk_choice(
    index: int, delta: dict, logprobs: dict | None, output: RequestOutput | None
) -> dict:
    return {
        "index": index,
        "delta": delta,
        "logprobs": logprobs,
        "finish_reason": output.finish_reason if output and output.finished else None,
        "stop_reason": output.stop_reason if output and output.finished else None,
    }
