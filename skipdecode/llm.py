"""The offline API: ``LLM().generate(prompts, params, skip=...)`` and ``LLM().chat(messages)``."""

from __future__ import annotations

from collections.abc import Sequence

from skipdecode.chat import chat_prompt_ids, check_conversation, render_chat
from skipdecode.config import CacheConfig, EngineConfig, ModelConfig
from skipdecode.engine import Engine
from skipdecode.loading import load_model
from skipdecode.model_runner.quant import DEFAULT_GROUP_SIZE
from skipdecode.outputs import RequestOutput
from skipdecode.scheduler import SamplingParams, SchedulerConfig, SkipConfig

Prompt = str | list[int]
Message = dict[str, str]


class LLM:
    """Generate for a list of prompts with continuous batching and SkipDecode.

    ``LLM()`` loads the default SmolLM2-135M-Instruct (CPU, bf16) with the skip-aware adapter
    shipped for it, when the package holds one (``adapter_path`` says which was merged;
    ``adapter=None`` loads the plain model). Keyword arguments map onto the engine configs;
    ``skip`` is the default schedule for prompts that bring none (else the adapter's or the
    checkpoint's skip_schedule.json, see ``default_skip``). ``quantization`` ("auto", "none",
    "int8", "int4") is ModelConfig's: "auto" serves a GGUF file's 4- and 8-bit blocks as
    stored in bf16 on CPU (the ``quantization`` property says what was chosen).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        dtype: str = "auto",
        device: str = "auto",
        skip: SkipConfig | None = None,
        max_model_len: int | None = None,
        max_num_seqs: int = 64,
        max_num_batched_tokens: int = 2048,
        block_size: int = 16,
        kv_cache_memory_gib: float = 1.0,
        num_kv_blocks: int | None = None,
        load_format: str = "auto",
        adapter: str | None = "auto",
        quantization: str = "auto",
        quantization_group_size: int = DEFAULT_GROUP_SIZE,
    ) -> None:
        model_config = ModelConfig(
            model=model,
            dtype=dtype,
            device=device,
            max_model_len=max_model_len,
            load_format=load_format,
            adapter=adapter,
            quantization=quantization,
            quantization_group_size=quantization_group_size,
        )
        engine_config = EngineConfig(
            model=model_config,
            cache=CacheConfig(
                block_size=block_size,
                kv_cache_memory_gib=kv_cache_memory_gib,
                num_blocks=num_kv_blocks,
            ),
            scheduler=SchedulerConfig(
                max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens
            ),
            skip=skip,
        )
        # Loaded here rather than by the Engine so the adapter actually merged can be reported.
        loaded = load_model(model_config)
        self._adapter_path = loaded.adapter_path
        self._quantization = loaded.quantization
        self.engine = Engine(engine_config, loaded)

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def adapter_path(self) -> str | None:
        """The LoRA adapter directory merged into the weights, or None for the plain model."""
        return self._adapter_path

    @property
    def quantization(self) -> str:
        """How the weights are served: none, int8, int4 or gguf (a GGUF file's Q4_0/Q4_1/Q8_0
        blocks as stored); ``quantization="auto"`` resolved for the loaded model."""
        return self._quantization

    @property
    def default_skip(self) -> SkipConfig | None:
        """The skip setting of prompts that bring none: ``LLM(skip=...)``, else the default of
        the adapter's or checkpoint's skip_schedule.json; None is full depth."""
        return self.engine.default_skip

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        skip: SkipConfig | Sequence[SkipConfig | None] | None = None,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in prompt order.

        ``sampling_params`` and ``skip`` may be one value for all prompts or one per prompt.
        With ``SamplingParams(prompt_logprobs=n)`` an output's ``prompt_logprobs`` holds, per
        prompt token, its logprob given the tokens before it, its rank and the top-n (None for
        the first token); prompt tokens run every layer, so these do not depend on ``skip``.
        """
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = _per_prompt(sampling_params, len(prompts), "sampling_params")
        skips = _per_prompt(skip, len(prompts), "skip")
        request_ids: list[str] = []
        try:
            for prompt, p, s in zip(prompts, params, skips):
                request_ids.append(self.engine.add_request(prompt, p or SamplingParams(), s))
        except ValueError:
            for request_id in request_ids:  # all or nothing: leave no half-added batch behind
                self.engine.abort_request(request_id)
            raise
        finals: dict[str, RequestOutput] = {}
        while self.engine.has_unfinished_requests():
            for output in self.engine.step():
                if output.finished:
                    finals[output.request_id] = output
        return [finals[request_id] for request_id in request_ids]

    def chat(
        self,
        messages: list[Message] | list[list[Message]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        skip: SkipConfig | Sequence[SkipConfig | None] | None = None,
        *,
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
    ) -> list[RequestOutput]:
        """Generate replies to one conversation (a list of {"role", "content"} dicts) or to a
        list of conversations; outputs come back in conversation order.

        Each conversation goes through the tokenizer's chat template (or ``chat_template``) as
        in the server's /v1/chat/completions. ``sampling_params`` and ``skip`` as in
        ``generate``. Malformed messages raise ValueError naming the field
        (``messages[0][1].content``).
        """
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer: chat needs its chat template")
        conversations = _conversations(messages)
        prompts = [
            chat_prompt_ids(
                self.tokenizer,
                render_chat(self.tokenizer, conversation, add_generation_prompt, chat_template),
            )
            for conversation in conversations
        ]
        return self.generate(prompts, sampling_params, skip)


def _conversations(messages: object) -> list[list[Message]]:
    """One conversation or a list of them, as a list of checked conversations."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages: expected a non-empty list of messages or of conversations")
    if all(isinstance(item, (list, tuple)) for item in messages):
        return [
            check_conversation(conversation, f"messages[{i}]")
            for i, conversation in enumerate(messages)
        ]
    return [check_conversation(messages, "messages")]


def _per_prompt(value, count: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{name}: got {len(value)} values for {count} prompts")
        return list(value)
    return [value] * count
