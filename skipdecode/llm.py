"""The offline API: ``LLM().generate(prompts, params, skip=...)``."""

from __future__ import annotations

from collections.abc import Sequence

from skipdecode.config import CacheConfig, EngineConfig, ModelConfig
from skipdecode.engine import Engine
from skipdecode.outputs import RequestOutput
from skipdecode.scheduler import SamplingParams, SchedulerConfig, SkipConfig

Prompt = str | list[int]


class LLM:
    """Generate for a list of prompts with continuous batching and SkipDecode.

    ``LLM()`` loads the default SmolLM2-135M-Instruct (CPU, bf16). Keyword arguments map onto
    the engine configs; ``skip`` is the default schedule for prompts that bring none.
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
    ) -> None:
        model_config = ModelConfig(
            model=model,
            dtype=dtype,
            device=device,
            max_model_len=max_model_len,
            load_format=load_format,
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
        self.engine = Engine(engine_config)

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        skip: SkipConfig | Sequence[SkipConfig | None] | None = None,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in prompt order.

        ``sampling_params`` and ``skip`` may be one value for all prompts or one per prompt.
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


def _per_prompt(value, count: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{name}: got {len(value)} values for {count} prompts")
        return list(value)
    return [value] * count
