"""OpenAI request bodies (pydantic), plus the ``skip`` extension.

The field constraints here are what the OpenAPI document (``/openapi.json``) tells clients, so
they mirror the ranges ``SamplingParams`` and ``SkipConfig`` check; checks that need the model
(vocabulary, context length, layer count) stay with the engine, whose ValueError names the field
and becomes a 400 too. The API-only limits (choices, stop strings, decay length) live here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, model_validator
from pydantic_core import PydanticCustomError

from skipdecode.scheduler import SamplingParams, SkipConfig, StructuredOutput
from skipdecode.server.protocol_structured import (
    MAX_CHOICES,
    MAX_TOOLS,
    ResponseFormat,
    StructuredOutputsRequest,
    Tool,
    ToolCall,
    ToolChoice,
    constraint_of,
)

MAX_N = 64  # choices per request (each is one engine request)
MAX_NUM_CHOICES = 256  # prompts x n per completion request
MAX_LOGPROBS = 20
MAX_STOP = 16  # stop strings per request
# The schedule is tabulated per token up to decay_tokens (and presets search over it): bounded.
MAX_DECAY_TOKENS = 1024
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # seeds (torch takes 64 bits)
# OpenAI fields that would change the result but are not implemented: refused (400), not ignored.
# (``tools`` is a field of chat completions only.)
UNSUPPORTED_FIELDS = ("best_of", "logit_bias", "suffix", "tools", "functions")


def _not_bool_or_text(value: Any) -> Any:
    if isinstance(value, (bool, str)):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


def _int(**bounds: int) -> Any:
    """An integer as JSON Schema means it (``2`` or ``2.0``; not ``true``, ``"2"`` or ``2.5``),
    within ``bounds`` (the ``Field`` sits inside, so the document shows them)."""
    return Annotated[int, Field(**bounds), Strict(False), BeforeValidator(_not_bool_or_text)]


Int = _int()
PositiveInt = _int(ge=1)
NonNegativeInt = _int(ge=0)
NumChoices = _int(ge=1, le=MAX_N)
NumLogprobs = _int(ge=0, le=MAX_LOGPROBS)
DecayTokens = _int(ge=1, le=MAX_DECAY_TOKENS)
Seed = _int(ge=INT64_MIN, le=INT64_MAX)
NonEmptyText = Annotated[str, Field(min_length=1)]
TokenIds = Annotated[list[NonNegativeInt], Field(min_length=1)]
Stop = NonEmptyText | Annotated[list[NonEmptyText], Field(max_length=MAX_STOP)]


def _has_lone_surrogate(value: Any) -> bool:
    """True if any string in the decoded JSON is not valid Unicode (JSON's ``"\\ud800"``)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


class StrictModel(BaseModel):
    """JSON types as the document says: no ``true`` for a number, no ``"5"`` for an integer."""

    model_config = ConfigDict(strict=True)


class RequestBody(StrictModel):
    """Base of every request body: its strings must be valid Unicode (tokenizers need it)."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        if _has_lone_surrogate(data):
            raise ValueError("the request contains a string that is not valid Unicode")
        return data


class SkipRequest(StrictModel):
    """The ``skip`` field: a target ``speedup`` or the explicit depth-schedule knobs.

    Given, it replaces the server's default schedule; knobs left out take SkipConfig's
    defaults (``{}`` is full depth).
    """

    model_config = ConfigDict(extra="forbid")

    speedup: float | None = Field(None, ge=1, allow_inf_nan=False)
    warmup_layers: NonNegativeInt | None = None
    max_depth: PositiveInt | None = None
    min_depth: PositiveInt | None = None
    decay_tokens: DecayTokens | None = None

    def to_config(self) -> SkipConfig:
        """Raises ValueError (naming the knob) for an invalid combination."""
        return SkipConfig(**self.model_dump(exclude_none=True))


class StreamOptions(StrictModel):
    include_usage: bool = False


class SamplingRequest(RequestBody):
    """Fields shared by completions and chat completions; unknown extra fields are ignored."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None  # None: the served model
    max_tokens: PositiveInt | None = None  # None: the rest of the context, like vLLM
    temperature: float = Field(1.0, ge=0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    top_k: Int = 0  # <= 0 disables it (vLLM's -1 works too)
    min_p: float = Field(0.0, ge=0, le=1, allow_inf_nan=False)
    n: NumChoices = 1
    stop: Stop | None = None
    seed: Seed | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float = Field(0.0, ge=-2, le=2, allow_inf_nan=False)
    repetition_penalty: float = Field(1.0, gt=0, allow_inf_nan=False)
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    skip: SkipRequest | None = None
    # Structured outputs (server/protocol_structured.py): OpenAI's field and vLLM's.
    response_format: ResponseFormat | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: NonEmptyText | None = None
    guided_choice: (
        Annotated[list[NonEmptyText], Field(min_length=1, max_length=MAX_CHOICES)] | None
    ) = None
    guided_grammar: NonEmptyText | None = None
    structured_outputs: StructuredOutputsRequest | None = None
    prompt_logprobs: NumLogprobs | None = None  # vLLM's: each prompt token's logprob and top-n

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> SamplingRequest:
        for name in UNSUPPORTED_FIELDS:
            if (self.model_extra or {}).get(name) is not None:
                raise ValueError(f"{name} is not supported")
        return self

    def output_constraint(self) -> tuple[StructuredOutput, str] | None:
        """The constraint on the output and the field that set it (ValueError if several)."""
        return constraint_of(self)

    def sampling_params(
        self,
        max_tokens: int,
        logprobs: int | None,
        choice_index: int,
        structured_output: StructuredOutput | None = None,
    ) -> SamplingParams:
        """Params for choice ``choice_index``; a seeded request uses ``seed + choice_index``."""
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            seed=None if self.seed is None else self.seed + choice_index,
            stop=tuple(stop),
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            structured_output=structured_output,
            prompt_logprobs=self.prompt_logprobs,
        )

    @property
    def include_usage_in_stream(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(SamplingRequest):
    """POST /v1/completions."""

    prompt: (
        NonEmptyText
        | Annotated[list[NonEmptyText], Field(min_length=1)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1)]
    )
    echo: bool = False
    logprobs: NumLogprobs | None = None

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt (a batch of strings or of token-id lists, or a single one)."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if prompt and all(isinstance(p, int) for p in prompt):
            return [list(prompt)]
        return list(prompt)


class TextPart(StrictModel):
    type: Literal["text"]
    text: str


class ChatMessage(StrictModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant turn that called tools
    tool_call_id: str | None = None  # a tool turn: the call it answers

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(SamplingRequest):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool = False
    top_logprobs: NumLogprobs | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True

    @property
    def requested_max_tokens(self) -> int | None:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens

    def template_messages(self) -> list[dict[str, str]]:
        """Messages as the chat template wants them (``developer`` is OpenAI's new ``system``)."""
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in self.messages
        ]


class TokenizeRequest(RequestBody):
    """POST /tokenize: a prompt, or chat messages rendered through the chat template."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(RequestBody):
    """POST /detokenize."""

    model: str | None = None
    tokens: list[NonNegativeInt]
