"""POST /v1/completions: JSON or SSE, n choices per prompt, echo, logprobs (of the echoed prompt
too), prompt_logprobs, skip counters."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from skipdecode.outputs import RequestOutput
from skipdecode.server.choice_stream import ChoiceSpec, ChoiceStream
from skipdecode.server.engine_client import EngineClient
from skipdecode.server.errors import APIError
from skipdecode.server.logprobs import completion_logprobs
from skipdecode.server.prompt_logprobs import (
    check_prompt_logprobs,
    echo_logprobs,
    join_logprobs,
    vllm_prompt_logprobs,
    with_echo_logprobs,
)
from skipdecode.server.protocol import MAX_NUM_CHOICES, CompletionRequest
from skipdecode.server.serving_common import (
    build_specs,
    check_stream_options,
    collect,
    new_id,
    now,
    output_constraint,
    sse_response,
    usage,
)


async def create_completion(
    client: EngineClient, body: CompletionRequest, request: Request
) -> Response:
    client.check_model(body.model)
    check_stream_options(body)
    check_prompt_logprobs(body)
    prompts = body.prompts()
    if not prompts or any(len(p) == 0 for p in prompts):
        raise APIError(400, "prompt must not be empty", param="prompt")
    if len(prompts) * body.n > MAX_NUM_CHOICES:
        message = f"prompts x n = {len(prompts) * body.n} choices; at most {MAX_NUM_CHOICES}"
        raise APIError(400, message, param="prompt")
    prompts_ids = await client.tokenize_prompts(prompts)
    max_tokens = [client.default_max_tokens(body.max_tokens, len(ids)) for ids in prompts_ids]
    skip = client.skip_config(body.skip)
    constraint = await output_constraint(client, body)
    response_id = new_id("cmpl")
    specs = build_specs(response_id, prompts_ids, body, max_tokens, body.logprobs, constraint)
    specs = with_echo_logprobs(specs, body)
    echoes = [_echo_text(client, p) if body.echo else "" for p in prompts]
    stream = await client.open(specs, skip)
    meta = {"id": response_id, "created": now(), "model": body.model or client.config.model_name}
    if body.stream:
        return sse_response(_chunks(client, body, stream, echoes, meta), stream.aclose)
    outputs = await collect(stream, request)
    choices = [
        _choice(client, body, spec, output, echoes[spec.prompt_index])
        for spec, output in zip(specs, outputs)
    ]
    return JSONResponse(
        {**meta, "object": "text_completion", "choices": choices, "usage": usage(specs, outputs)}
    )


def _echo_text(client: EngineClient, prompt: str | list[int]) -> str:
    return prompt if isinstance(prompt, str) else client.decode(prompt)


def _choice(
    client: EngineClient,
    body: CompletionRequest,
    spec: ChoiceSpec,
    output: RequestOutput,
    echo: str,
) -> dict:
    logprobs = None
    if body.logprobs is not None:
        # The generated tokens' offsets start where the echoed prompt ends.
        logprobs = completion_logprobs(
            client.tokenizer, output.token_ids, output.logprobs or [], len(echo)
        )
        if body.echo:
            prompt = echo_logprobs(client.tokenizer, output, body.logprobs)
            logprobs = join_logprobs(prompt, logprobs)
    choice = {
        "index": spec.index,
        "text": echo + output.text,
        "logprobs": logprobs,
        "finish_reason": output.finish_reason,
        "stop_reason": output.stop_reason,
    }
    if body.prompt_logprobs is not None:
        choice["prompt_logprobs"] = vllm_prompt_logprobs(
            client.tokenizer, output, body.prompt_logprobs
        )
    return choice


async def _chunks(
    client: EngineClient,
    body: CompletionRequest,
    stream: ChoiceStream,
    echoes: list[str],
    meta: dict,
) -> AsyncIterator[dict]:
    """One chunk per engine output that adds text, logprobs or a finish reason."""
    specs = {spec.index: spec for spec in stream.specs}
    sent_chars = dict.fromkeys(specs, 0)  # text already sent, per choice
    sent_tokens = dict.fromkeys(specs, 0)  # tokens whose logprobs were sent
    echoed: set[int] = set()
    finals: dict[int, RequestOutput] = {}
    try:
        async for index, output in stream:
            text = output.text[sent_chars[index] :]
            echo = echoes[specs[index].prompt_index]  # "" without echo
            is_echoed_now = body.echo and index not in echoed
            if is_echoed_now:
                echoed.add(index)
                text = echo + text
            logprobs = None
            if body.logprobs is not None:
                start, offset = sent_tokens[index], len(echo) + sent_chars[index]
                logprobs = completion_logprobs(
                    client.tokenizer,
                    output.token_ids[start:],
                    (output.logprobs or [])[start:],
                    offset,
                )
                if is_echoed_now:  # the first chunk: the prompt's logprobs come first
                    prompt = echo_logprobs(client.tokenizer, output, body.logprobs)
                    logprobs = join_logprobs(prompt, logprobs)
                sent_tokens[index] = len(output.logprobs or [])
            sent_chars[index] = len(output.text)
            if output.finished:
                finals[index] = output
            if not text and not output.finished and not (logprobs and logprobs["tokens"]):
                continue
            choice = {
                "index": index,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": output.finish_reason,
                "stop_reason": output.stop_reason,
            }
            yield {**meta, "object": "text_completion", "choices": [choice]}
        if body.include_usage_in_stream:
            outputs = [finals[spec.index] for spec in stream.specs]
            yield {
                **meta,
                "object": "text_completion",
                "choices": [],
                "usage": usage(stream.specs, outputs),
            }
    finally:
        await stream.aclose()
