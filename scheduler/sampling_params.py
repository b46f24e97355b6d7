"""Per-request sampling parameters, validated at construction."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Literal

MAX_LOGPROBS = 20  # the most top-n logprobs a request may ask for (OpenAI's limit)
GREEDY_TEMPERATURE = 1e-5  # temperatures below this sample greedily (vLLM's threshold too)


StructuredKind = Literal["json", "json_object", "regex", "choice", "grammar"]
STRUCTURED_KINDS: tuple[str, ...] = ("json", "json_object", "regex", "choice", "grammar")


@dataclass(frozen=True)
class StructuredOutput:
    """A constraint on the generated text, enforced by a grammar that masks the logits.

    ``kind`` says how to read ``spec``: ``json`` (a JSON schema, serialized), ``json_object``
    (any JSON object; ``spec`` unused), ``regex``, ``choice`` (one of ``choices``) or ``grammar``
    (a Lark grammar, llguidance's dialect). Build one with the class methods.
    """

    kind: StructuredKind
    spec: str = ""
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in STRUCTURED_KINDS:
            raise ValueError(
                f"StructuredOutput.kind must be one of {', '.join(STRUCTURED_KINDS)}"
                f" (got {self.kind!r})"
            )
        if not isinstance(self.spec, str):
            raise ValueError("StructuredOutput.spec must be a string")
        object.__setattr__(self, "choices", tuple(self.choices))
        if self.kind == "choice" and (
            not self.choices or not all(isinstance(c, str) and c for c in self.choices)
        ):
            raise ValueError(
                "StructuredOutput.choices must be a non-empty list of non-empty strings"
            )
        if self.kind in ("json", "regex", "grammar") and not self.spec:
            raise ValueError(f"StructuredOutput.spec must not be empty for kind {self.kind!r}")

    @classmethod
    def json_schema(cls, schema: dict | str) -> StructuredOutput:
        """Output that parses as JSON and validates against ``schema``."""
        return cls("json", schema if isinstance(schema, str) else json.dumps(schema))

    @classmethod
    def json_object(cls) -> StructuredOutput:
        return cls("json_object")

    @classmethod
    def regex(cls, pattern: str) -> StructuredOutput:
        """Output that matches ``pattern`` as a whole."""
        return cls("regex", pattern)

    @classmethod
    def choice(cls, choices: list[str] | tuple[str, ...]) -> StructuredOutput:
        """Output that is exactly one of ``choices``."""
        return cls("choice", choices=tuple(choices))

    @classmethod
    def lark(cls, grammar: str) -> StructuredOutput:
        """Output that the Lark grammar accepts (llguidance's dialect, start rule ``start``)."""
        return cls("grammar", grammar)


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens and when it stops.

    ``temperature`` below 1e-5 (0 included) means greedy. ``top_k <= 0`` disables top-k.
    ``logprobs`` asks for the sampled token's logprob plus the top-n alternatives at each step
    (``None``: none).
    ``prompt_logprobs`` does the same for prompt tokens (used by ``echo`` scoring).
    ``structured_output`` constrains the text to a JSON schema, regex, choice list or grammar.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    include_stop_str_in_output: bool = False
    structured_output: StructuredOutput | None = None

    def __post_init__(self) -> None:
        # Accept lists for convenience but store tuples, so params stay hashable and immutable.
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        _check(
            isinstance(self.max_tokens, int) and self.max_tokens >= 1, "max_tokens", "must be >= 1"
        )
        _check(_finite(self.temperature) and self.temperature >= 0, "temperature", "must be >= 0")
        _check(_finite(self.top_p) and 0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        _check(isinstance(self.top_k, int), "top_k", "must be an integer (<= 0 disables it)")
        _check(_finite(self.min_p) and 0 <= self.min_p <= 1, "min_p", "must be in [0, 1]")
        _check(
            _finite(self.repetition_penalty) and self.repetition_penalty > 0,
            "repetition_penalty",
            "must be > 0",
        )
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check(_finite(value) and -2 <= value <= 2, name, "must be in [-2, 2]")
        _check(self.seed is None or isinstance(self.seed, int), "seed", "must be an integer")
        _check(
            all(isinstance(s, str) and s for s in self.stop), "stop", "must be non-empty strings"
        )
        _check(
            all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids),
            "stop_token_ids",
            "must be non-negative integers",
        )
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            _check(
                value is None or (isinstance(value, int) and 0 <= value <= MAX_LOGPROBS),
                name,
                f"must be in [0, {MAX_LOGPROBS}]",
            )

        _check(
            self.structured_output is None or isinstance(self.structured_output, StructuredOutput),
            "structured_output",
            "must be a StructuredOutput",
        )

    @property
    def is_greedy(self) -> bool:
        # Dividing logits by a tiny temperature overflows them to inf/NaN; below this it is argmax.
        return self.temperature < GREEDY_TEMPERATURE

    @property
    def has_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"SamplingParams.{name} {message}")
