"""Response bodies, as pydantic models for the OpenAPI document.

The handlers build plain dicts (serving_*.py); these models say what those dicts hold, so
``/openapi.json`` describes the real responses and a schema fuzzer can check them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error: 400, 401, 404, 413, 500, 503."""

    error: ErrorInfo


class Usage(BaseModel):
    """OpenAI's counters plus SkipDecode's (docs/api.md)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    layers_computed: int
    layers_skipped: int
    theoretical_speedup: float


class CompletionLogprobs(BaseModel):
    """With ``echo``, the prompt tokens come first; the first has null logprobs."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class PromptLogprob(BaseModel):
    """One token of vLLM's ``prompt_logprobs`` (keyed by token id)."""

    logprob: float
    rank: int | None
    decoded_token: str


# Per prompt token (null for the first): the prompt token and the top-n, by token id.
PromptLogprobs = list[dict[str, PromptLogprob] | None]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length", "abort"] | None
    stop_reason: int | str | None
    prompt_logprobs: PromptLogprobs | None = None  # present when asked


class CompletionResponse(BaseModel):
    """``POST /v1/completions`` without ``stream`` (streamed: SSE chunks of the same shape)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class FunctionCallOut(BaseModel):
    name: str
    arguments: str  # JSON text


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"]
    function: FunctionCallOut


class ChatMessageOut(BaseModel):
    role: Literal["assistant"]
    content: str | None  # None: the reply is tool calls only
    tool_calls: list[ToolCallOut] | None = None  # present when the request had tools


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: ChatLogprobs | None
    finish_reason: Literal["stop", "length", "abort", "tool_calls"] | None
    stop_reason: int | str | None


class ChatCompletionResponse(BaseModel):
    """``POST /v1/chat/completions`` without ``stream`` (streamed: ``chat.completion.chunk``)."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    prompt_logprobs: PromptLogprobs | None = None  # present when asked (vLLM's place for it)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    max_model_len: int
    num_layers: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


class StatsResponse(BaseModel):
    """``GET /internal/stats``: engine occupancy (for tests and operators; not a stable API)."""

    num_running: int
    num_waiting: int
    num_unfinished: int
    num_open_responses: int
    kv_used_blocks: int
    kv_total_blocks: int
    is_draining: bool
    replicas: dict[str, dict] | None = Field(
        default=None,
        description="Under a replica runtime (Ray Serve): every live replica's own stats and"
        " process id, by replica id. Absent for a single process.",
    )


class HealthResponse(BaseModel):
    status: Literal["ok"]


class VersionResponse(BaseModel):
    version: str
