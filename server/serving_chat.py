"""POST /v1/chat/completions: the tokenizer's chat template, then the completions machinery."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from skipdecode.outputs import RequestOutput
from skipdecode.server.chat_reply import ReplyStream
from skipdecode.server.choice_stream import ChoiceStream
from skipdecode.server.engine_client import EngineClient
from skipdecode.server.errors import APIError
from skipdecode.server.logprobs import chat_logprobs
from skipdecode.server.prompt_logprobs import check_prompt_logprobs, vllm_prompt_logprobs
from skipdecode.server.protocol import ChatCompletionRequest
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
from skipdecode.server.tool_calls import (
    ToolPlan,
    finish_reason,
    function_schemas,
    parse_reply,
    plan_tools,
    template_messages,
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
    check_prompt_logprobs(body)
    logprobs = _num_logprobs(body)
    plan = _plan_tools(body)
    constraint = await output_constraint(
        client, body, plan.constraint, function_schemas(body) if plan.mode != "none" else []
    )
    renders_tools = client.template_renders_tools
    messages = template_messages(body.messages, plan, renders_tools)
    tools = plan.tools if renders_tools and plan.mode != "none" else None
    prompt = await client.render_chat(messages, tools=tools)
    # The template already wrote the special tokens (e.g. <|im_start|>): add none.
    prompt_ids = await client.tokenize_text(prompt, add_special_tokens=False)
    max_tokens = client.default_max_tokens(body.requested_max_tokens, len(prompt_ids))
    skip = client.skip_config(body.skip)
    response_id = new_id("chatcmpl")
    specs = build_specs(response_id, [prompt_ids], body, [max_tokens], logprobs, constraint)
    stream = await client.open(specs, skip)
    meta = {"id": response_id, "created": now(), "model": body.model or client.config.model_name}
    if body.stream:
        return sse_response(_chunks(client, body, plan, stream, meta), stream.aclose)
    outputs = await collect(stream, request)
    choices = [
        _choice(client, body, plan, spec.index, output) for spec, output in zip(specs, outputs)
    ]
    usage_counts = usage(specs, outputs)
    response = {**meta, "object": "chat.completion", "choices": choices, "usage": usage_counts}
    if body.prompt_logprobs is not None:  # one prompt for every choice: vLLM's top-level field
        num_top = body.prompt_logprobs
        response["prompt_logprobs"] = vllm_prompt_logprobs(client.tokenizer, outputs[0], num_top)
    return JSONResponse(response)


def _plan_tools(body: ChatCompletionRequest) -> ToolPlan:
    try:
        return plan_tools(body)
    except ValueError as exc:
        raise APIError(400, str(exc), param=str(exc).split(":")[0]) from exc


def _choice(
    client: EngineClient,
    body: ChatCompletionRequest,
    plan: ToolPlan,
    index: int,
    output: RequestOutput,
) -> dict:
    content, calls = parse_reply(output.text, plan) if plan.parses_calls else (output.text, [])
    message: dict = {"role": "assistant", "content": content}
    if plan.parses_calls:
        message["tool_calls"] = calls
    return {
        "index": index,
        "message": message,
        "logprobs": _logprobs(client, output, 0) if body.logprobs else None,
        "finish_reason": finish_reason(plan, calls, output.finish_reason),
        "stop_reason": output.stop_reason,
    }


def _logprobs(client: EngineClient, output: RequestOutput, start: int) -> dict:
    return chat_logprobs(
        client.tokenizer, output.token_ids[start:], (output.logprobs or [])[start:]
    )


async def _chunks(
    client: EngineClient,
    body: ChatCompletionRequest,
    plan: ToolPlan,
    stream: ChoiceStream,
    meta: dict,
) -> AsyncIterator[dict]:
    """A role chunk per choice, then content (or tool call) deltas, then a chunk with the
    finish reason."""
    meta = {**meta, "object": "chat.completion.chunk"}
    for spec in stream.specs:
        delta = {"role": "assistant", "content": ""}
        yield {**meta, "choices": [_chunk_choice(spec.index, delta, None, None)]}
    replies = {spec.index: ReplyStream(plan) for spec in stream.specs}
    sent_tokens = {spec.index: 0 for spec in stream.specs}
    finals: dict[int, RequestOutput] = {}
    try:
        async for index, output in stream:
            reply = replies[index]
            delta = reply.delta(output.text, output.finished)
            logprobs = None
            if body.logprobs:
                logprobs = _logprobs(client, output, sent_tokens[index])
                sent_tokens[index] = len(output.logprobs or [])
            if output.finished:
                finals[index] = output
            elif not delta and not (logprobs and logprobs["content"]):
                continue
            choice = _chunk_choice(index, delta, logprobs, output, plan, reply.calls)
            yield {**meta, "choices": [choice]}
        if body.include_usage_in_stream:
            outputs = [finals[spec.index] for spec in stream.specs]
            yield {**meta, "choices": [], "usage": usage(stream.specs, outputs)}
    finally:
        await stream.aclose()


def _chunk_choice(
    index: int,
    delta: dict,
    logprobs: dict | None,
    output: RequestOutput | None,
    plan: ToolPlan | None = None,
    calls: list[dict] = (),
) -> dict:
    finished = output is not None and output.finished
    return {
        "index": index,
        "delta": delta,
        "logprobs": logprobs,
        "finish_reason": finish_reason(plan, list(calls), output.finish_reason)
        if finished
        else None,
        "stop_reason": output.stop_reason if output and output.finished else None,
    }
