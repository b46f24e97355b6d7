"""OpenAI request bodies (pydantic), plus the ``skip`` extension.

Ranges that ``SamplingParams`` and ``SkipConfig`` already check are left to them (their
ValueError names the field and becomes a 400); here go types and the API-only limits.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from skipdecode.scheduler import SamplingParams, SkipConfig

MAX_N = 64  # choices per request (each is one engine request)
MAX_LOGPROBS = 20
# OpenAI fields that would change the result but are not implemented: refused (400), not ignored.
UNSUPPORTED_FIELDS = ("best_of", "logit_bias", "suffix", "tools", "functions", "response_format")


class SkipRequest(BaseModel):
    """The ``skip`` field: a target ``speedup`` or the explicit depth-schedule knobs.

    Given, it replaces the server's default schedule; knobs left out take SkipConfig's
    defaults (``{}`` is full depth).
    """

    model_config = ConfigDict(extra="forbid")

    speedup: float | None = None
    warmup_layers: int | None = None
    max_depth: int | None = None
    min_depth: int | None = None
    decay_tokens: int | None = None

    def to_config(self) -> SkipConfig:
        """Raises ValueError (naming the knob) for an invalid combination."""
        return SkipConfig(**self.model_dump(exclude_none=True))


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """Fields shared by completions and chat completions; unknown extra fields are ignored."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None  # None: the served model
    max_tokens: int | None = None  # None: the rest of the context, like vLLM
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # <= 0 disables it (vLLM's -1 works too)
    min_p: float = 0.0
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    skip: SkipRequest | None = None

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> SamplingRequest:
        for name in UNSUPPORTED_FIELDS:
            if (self.model_extra or {}).get(name) is not None:
                raise ValueError(f"{name} is not supported")
        return self

    def sampling_params(
        self, max_tokens: int, logprobs: int | None, choice_index: int
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
        )

    @property
    def include_usage_in_stream(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(SamplingRequest):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt (a batch of strings or of token-id lists, or a single one)."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if prompt and all(isinstance(p, int) for p in prompt):
            return [list(prompt)]
        return list(prompt)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(SamplingRequest):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

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


class TokenizeRequest(BaseModel):
    """POST /tokenize: a prompt, or chat messages rendered through the chat template."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(BaseModel):
    """POST /detokenize."""

    model: str | None = None
    tokens: list[int]
