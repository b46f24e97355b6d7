"""Structured outputs: a grammar per request, compiled by llguidance, that masks the logits.

llguidance (PyPI ``llguidance``) turns a JSON schema, a regex, a choice list or a Lark grammar
into a token-level matcher. It was chosen over xgrammar after measuring both on SmolLM2's
49,152-token vocabulary (docs/api.md: compile and per-token mask times); it builds its parser
lazily, so a schema "compiles" in milliseconds and every step's work is capped by its parser
limits, and it installs as one 3 MB wheel with no dependencies.

The engine compiles each request's constraint once (cached per constraint), gives the request a
:class:`Grammar`, and the runner fills one bitmask row per constrained sequence each step
(``model_runner/grammar_mask.py``). The scheduler advances the grammar with every sampled token.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import llguidance
import llguidance.hf

from skipdecode.scheduler.sampling_params import StructuredOutput

logger = logging.getLogger(__name__)
CACHE_SIZE = 256  # compiled constraints kept (least recently used go first)
MAX_SPEC_CHARS = 200_000  # a schema, regex or grammar longer than this is refused
MAX_ERROR_CHARS = 500  # of llguidance's message, in a 400
# JSON as OpenAI's json_object mode promises it: an object at the top level.
_ANY_OBJECT = {"type": "object"}
# Compact JSON (no free whitespace), so a sampled model cannot pad forever between tokens.
_JSON_OPTIONS = {"whitespace_flexible": False}


class Grammar:
    """One request's matcher: which tokens may come next, advanced by each sampled token."""

    def __init__(self, matcher: llguidance.LLMatcher, eos_token_id: int | None) -> None:
        self.matcher = matcher
        self.eos_token_id = eos_token_id

    def accept(self, token_id: int) -> bool:
        """Advance by a sampled token; False if the grammar does not allow it (a bug upstream,
        since the token was drawn from the masked logits)."""
        return self.matcher.consume_token(token_id)

    @property
    def is_finished(self) -> bool:
        """The text is complete: the grammar allows no token but end-of-sequence."""
        return self.matcher.is_stopped()

    @property
    def error(self) -> str:
        return self.matcher.get_error()


class GrammarCompiler:
    """Compiles constraints for one tokenizer; thread-safe, with an LRU cache per constraint.

    The llguidance tokenizer (about a second to build for a 50k vocabulary) is made on first
    use, so engines that never see a constraint never pay for it.
    """

    def __init__(self, tokenizer, vocab_size: int) -> None:
        self._hf_tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._cache: OrderedDict[StructuredOutput, str] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._tokenizer is None:
                if self._hf_tokenizer is None:
                    raise ValueError("structured output needs a model with a tokenizer")
                self._tokenizer = llguidance.hf.from_tokenizer(
                    self._hf_tokenizer, n_vocab=self._vocab_size
                )
            return self._tokenizer

    def compile(self, constraint: StructuredOutput) -> str:
        """The validated grammar of ``constraint``; ValueError with llguidance's reason if the
        schema, regex or grammar is invalid or uses a feature it does not support."""
        with self._lock:
            if constraint in self._cache:
                self._cache.move_to_end(constraint)
                return self._cache[constraint]
        with _as_value_error(constraint):
            grammar = _grammar(constraint)
            is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
                grammar, self.tokenizer
            )
        if is_error:
            raise ValueError(f"{_what(constraint)} cannot be used: {_first_line(messages)}")
        with self._lock:
            self._cache[constraint] = grammar
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return grammar

    def grammar(self, constraint: StructuredOutput) -> Grammar:
        """A fresh matcher for one request (ValueError as :meth:`compile`)."""
        grammar = self.compile(constraint)
        with _as_value_error(constraint):
            matcher = llguidance.LLMatcher(self.tokenizer, grammar)
        if matcher.is_error():
            raise ValueError(f"{_what(constraint)} cannot be used: {matcher.get_error()}")
        eos = getattr(self._hf_tokenizer, "eos_token_id", None)
        return Grammar(matcher, eos)


@contextmanager
def _as_value_error(constraint: StructuredOutput) -> Iterator[None]:
    """Any failure inside llguidance, a Rust panic included (pyo3 raises those as a
    BaseException), as a ValueError naming the constraint: a bad request, not a crashed step."""
    try:
        yield
    except ValueError:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        raise ValueError(f"{_what(constraint)} cannot be used: {exc}") from exc


def _grammar(constraint: StructuredOutput) -> str:
    if len(constraint.spec) > MAX_SPEC_CHARS:
        raise ValueError(f"{_what(constraint)} is longer than {MAX_SPEC_CHARS} characters")
    kind = constraint.kind
    if kind == "json_object":
        return llguidance.LLMatcher.grammar_from_json_schema(_ANY_OBJECT, defaults=_JSON_OPTIONS)
    if kind == "json":
        try:
            schema = json.loads(constraint.spec)
        except json.JSONDecodeError as exc:
            raise ValueError(f"the JSON schema is not valid JSON: {exc}") from exc
        if isinstance(schema, bool):
            schema = {} if schema else {"not": {}}
        if not isinstance(schema, dict):
            raise ValueError("the JSON schema must be an object")
        return llguidance.LLMatcher.grammar_from_json_schema(
            closed_objects(schema), defaults=_JSON_OPTIONS
        )
    if kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(constraint.spec)
    if kind == "choice":
        return llguidance.LLMatcher.grammar_from_regex(
            "|".join(f"({re.escape(c)})" for c in constraint.choices)
        )
    return llguidance.LLMatcher.grammar_from_lark(constraint.spec)


_SUBSCHEMA = ("items", "additionalItems", "contains", "not", "if", "then", "else")
_SUBSCHEMA_LISTS = ("prefixItems", "anyOf", "oneOf", "allOf")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def closed_objects(schema: object) -> object:
    """A copy of ``schema`` where an object that lists ``properties`` and says nothing of
    ``additionalProperties`` (or ``patternProperties``) allows no other keys.

    JSON Schema allows extra keys by default, and a sampled model fills them without end;
    OpenAI's strict mode and xgrammar's default treat such objects as closed, and so does this.
    """
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SUBSCHEMA:
        if key in out:
            out[key] = closed_objects(out[key])
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [closed_objects(s) for s in out[key]]
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: closed_objects(s) for name, s in out[key].items()}
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = closed_objects(out["additionalProperties"])
    is_open = "additionalProperties" not in out and "patternProperties" not in out
    if "properties" in out and is_open:
        out["additionalProperties"] = False
    return out


def _what(constraint: StructuredOutput) -> str:
    return {
        "json": "the JSON schema",
        "json_object": "json_object",
        "regex": "the regex",
        "choice": "the choice list",
        "grammar": "the grammar",
    }[constraint.kind]


def _first_line(messages: list[str]) -> str:
    text = messages[0] if messages else "unknown error"
    lines = [line.strip() for line in text.strip().splitlines()]
    return " ".join(line for line in lines if line.strip("^ "))[:MAX_ERROR_CHARS]
