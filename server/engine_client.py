"""What the routes use of the engine: names, tokenizer, submission, readiness and draining."""

from __future__ import annotations

import asyncio
import functools
import logging

from skipdecode.async_engine import AsyncEngine
from skipdecode.chat import render_chat
from skipdecode.scheduler import PresetFamily, SkipConfig, StructuredOutput
from skipdecode.server.choice_stream import ChoiceSpec, ChoiceStream
from skipdecode.server.config import ServerConfig
from skipdecode.server.core_client import EngineCoreClient
from skipdecode.server.errors import APIError, as_invalid_request, unavailable
from skipdecode.server.protocol import SkipRequest

logger = logging.getLogger(__name__)
# Text longer than this is tokenized (or templated) on a worker thread: a megabyte takes about a
# second, which would stall every other request and /health on the event loop.
OFFLOAD_CHARS = 16_384
# Tokenizing costs a few hundred bytes per token (a 3.6 MB prompt: +500 MiB at its peak), so a
# long text is measured by a prefix of this many characters per context token first.
PREFIX_CHARS_PER_TOKEN = 16
PREFIX_MARGIN_TOKENS = 64  # the cut may split a word: a prefix may tokenize a little longer


class EngineClient:
    """The HTTP side of one AsyncEngine.

    Owns the set of live ChoiceStreams (so a shutdown can end them) and the draining flag; the
    engine's state stays with the AsyncEngine and its thread.
    """

    def __init__(self, async_engine: AsyncEngine | EngineCoreClient, config: ServerConfig) -> None:
        self.async_engine = async_engine
        self.config = config
        engine = async_engine.engine
        self.tokenizer = engine.tokenizer
        self.max_model_len: int = engine.max_model_len
        self.num_layers: int = engine.num_layers
        self.preset_family: PresetFamily = engine.preset_family
        self.vocab_size: int = engine.hf_config.vocab_size
        self.is_draining = False
        self._live: set[ChoiceStream] = set()

    # ---- checks --------------------------------------------------------------------------

    def check_model(self, name: str | None) -> None:
        if name is not None and name not in self.config.served_model_names:
            raise APIError(
                404,
                f"The model `{name}` does not exist.",
                type="not_found_error",
                param="model",
                code="model_not_found",
            )

    def check_ready(self) -> None:
        """503 while shutting down or when the engine loop has died."""
        if self.is_draining:
            raise unavailable("the server is shutting down")
        if not self.async_engine.is_running:
            raise unavailable("the engine is not running")

    def require_tokenizer(self):
        if self.tokenizer is None:
            raise APIError(400, "this model has no tokenizer: send token ids")
        return self.tokenizer

    # ---- prompts -------------------------------------------------------------------------

    def tokenize(
        self, prompt: str | list[int], add_special_tokens: bool = True, param: str = "prompt"
    ) -> list[int]:
        """Token ids of a text prompt, or token ids checked against the vocabulary (400s)."""
        if isinstance(prompt, str):
            tokenizer = self.require_tokenizer()
            return list(tokenizer(prompt, add_special_tokens=add_special_tokens).input_ids)
        with as_invalid_request(param):
            return self.async_engine.engine.tokenize(prompt)

    async def tokenize_text(
        self, prompt: str | list[int], add_special_tokens: bool = True
    ) -> list[int]:
        """``tokenize_prompts`` for one prompt."""
        return (await self.tokenize_prompts([prompt], add_special_tokens))[0]

    async def tokenize_prompts(
        self, prompts: list[str | list[int]], add_special_tokens: bool = True
    ) -> list[list[int]]:
        """Token ids of each prompt (400s as ``tokenize``), off the event loop when the texts are
        long; a text that cannot fit the context is refused from a prefix."""
        work = functools.partial(self._tokenize_all, prompts, add_special_tokens)
        num_chars = sum(len(p) for p in prompts if isinstance(p, str))
        return await asyncio.to_thread(work) if num_chars > OFFLOAD_CHARS else work()

    def _tokenize_all(
        self, prompts: list[str | list[int]], add_special_tokens: bool
    ) -> list[list[int]]:
        return [self._tokenize_checked(prompt, add_special_tokens) for prompt in prompts]

    def _tokenize_checked(self, prompt: str | list[int], add_special_tokens: bool) -> list[int]:
        # If a prefix alone cannot fit the context, neither can the text: refuse it without
        # tokenizing the rest (memory grows with the tokens, not the characters).
        num_chars = self.max_model_len * PREFIX_CHARS_PER_TOKEN
        if isinstance(prompt, str) and len(prompt) > num_chars:
            num_tokens = len(self.tokenize(prompt[:num_chars], add_special_tokens))
            if num_tokens > self.max_model_len + PREFIX_MARGIN_TOKENS:
                message = (
                    f"prompt of {len(prompt)} characters is longer than the model's context length"
                    f" max_model_len={self.max_model_len} (its first {num_chars} characters are"
                    f" {num_tokens} tokens)"
                )
                raise APIError(400, message, param="prompt")
        return self.tokenize(prompt, add_special_tokens)

    async def render_chat(
        self,
        messages: list[dict],
        add_generation_prompt: bool = True,
        tools: list[dict] | None = None,
    ) -> str:
        """``apply_chat_template``, off the event loop for long conversations."""
        if sum(len(m["content"]) for m in messages) > OFFLOAD_CHARS:
            return await asyncio.to_thread(
                self.apply_chat_template, messages, add_generation_prompt, tools
            )
        return self.apply_chat_template(messages, add_generation_prompt, tools)

    @property
    def template_renders_tools(self) -> bool:
        """Whether the chat template itself lays out ``tools`` (else server/tool_calls.py
        describes them in a system message)."""
        return "tools" in (getattr(self.tokenizer, "chat_template", None) or "")

    def apply_chat_template(
        self,
        messages: list[dict],
        add_generation_prompt: bool = True,
        tools: list[dict] | None = None,
    ) -> str:
        tokenizer = self.require_tokenizer()
        if not getattr(tokenizer, "chat_template", None):
            raise APIError(400, "this model has no chat template: use /v1/completions")
        try:
            return render_chat(tokenizer, messages, add_generation_prompt, tools=tools)
        except ValueError as exc:  # the template rejected the conversation (jinja raise_exception)
            raise APIError(400, str(exc), param="messages") from exc

    async def check_constraint(self, constraint: StructuredOutput, field: str) -> None:
        """Compile ``constraint`` (cached; off the event loop, since the first one builds the
        grammar engine's view of the vocabulary); 400 naming ``field`` if it cannot be used."""
        try:
            await asyncio.to_thread(self.async_engine.engine.grammars.compile, constraint)
        except ValueError as exc:
            raise APIError(400, f"{field}: {exc}", param=field) from exc

    def decode(self, token_ids: list[int]) -> str:
        return self.require_tokenizer().decode(token_ids)

    def default_max_tokens(self, requested: int | None, prompt_len: int) -> int:
        """``requested``, or the rest of the context (too long a prompt fails in the engine)."""
        if requested is not None:
            return requested
        return max(self.max_model_len - prompt_len, 1)

    def skip_config(self, skip: SkipRequest | None) -> SkipConfig | None:
        """A request's ``skip`` as a SkipConfig (400 if invalid); a speedup preset comes back as
        explicit knobs, looked up once per distinct target (each search tries every depth pair
        over ``decay_tokens`` tokens)."""
        if skip is None:
            return None
        with as_invalid_request():
            config = skip.to_config()
            if config.speedup is None:
                return config
            return _preset_knobs(self.num_layers, config, self.preset_family)

    # ---- requests ------------------------------------------------------------------------

    async def open(self, specs: list[ChoiceSpec], skip: SkipConfig | None) -> ChoiceStream:
        """Submit every choice; ValueError -> 400, queue full / dead engine -> 503."""
        self.check_ready()
        stream = ChoiceStream(self.async_engine, specs, on_close=self._live.discard)
        with as_invalid_request():
            await stream.open(skip)
        self._live.add(stream)
        return stream

    def begin_drain(self, timeout: float) -> None:
        """Refuse new requests; after ``timeout`` seconds abort those still running."""
        if self.is_draining:
            return
        self.is_draining = True
        logger.info("draining %d open responses (up to %.1fs)", len(self._live), timeout)
        asyncio.get_running_loop().call_later(timeout, self.abort_all)

    def abort_all(self) -> None:
        for stream in list(self._live):
            stream.abort()

    @property
    def num_open_responses(self) -> int:
        return len(self._live)

    def stats(self) -> dict[str, int | bool]:
        """Engine occupancy, read from the event loop (plain counters; for tests and ops)."""
        occupancy = self.async_engine.occupancy()
        return {
            "num_running": occupancy["num_running"],
            "num_waiting": occupancy["num_waiting"],
            "num_unfinished": self.async_engine.num_unfinished,
            "num_open_responses": len(self._live),
            "kv_used_blocks": occupancy["kv_used_blocks"],
            "kv_total_blocks": occupancy["kv_total_blocks"],
            "is_draining": self.is_draining,
        }


@functools.lru_cache(maxsize=256)
def _preset_knobs(num_layers: int, config: SkipConfig, family: PresetFamily) -> SkipConfig:
    """The explicit knobs of a speedup preset: they resolve to the same schedule."""
    schedule = config.resolve(num_layers, family)
    return SkipConfig(
        warmup_layers=schedule.warmup_layers,
        max_depth=schedule.max_depth,
        min_depth=schedule.min_depth,
        decay_tokens=schedule.decay_tokens,
    )
