"""The engine: one step is schedule, run, update (DESIGN.md §5)."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import torch

from skipdecode.config import EngineConfig
from skipdecode.detokenizer import IncrementalDetokenizer
from skipdecode.kv_cache import KVCacheManager, num_blocks_for_budget
from skipdecode.loading import LoadedModel, load_model
from skipdecode.model_runner.runner import ModelRunner
from skipdecode.outputs import RequestOutput, snapshot
from skipdecode.request_factory import RequestFactory
from skipdecode.scheduler import (
    PresetFamily,
    Request,
    RequestStatus,
    SamplingParams,
    Scheduler,
    SkipConfig,
)
from skipdecode.scheduler.scheduler import default_step_tokens
from skipdecode.stats import StepStats
from skipdecode.structured_output import GrammarCompiler

logger = logging.getLogger(__name__)
GIB = 1 << 30


class Engine:
    """Serves many requests at once with SkipDecode.

    Owns the scheduler (requests and their state), the KV cache manager (block tables), the model
    runner (weights, KV tensors) and one detokenizer per live request. Not thread-safe: one
    thread drives ``step()`` (the async server wraps it).
    """

    def __init__(self, config: EngineConfig, loaded: LoadedModel | None = None) -> None:
        self.config = config
        loaded = loaded or load_model(config.model)
        self.hf_config, self.tokenizer = loaded.hf_config, loaded.tokenizer
        self.num_layers: int = loaded.model.num_layers
        # An explicit skip setting wins; else the schedule the checkpoint was fine-tuned for.
        self.default_skip = config.skip if config.skip is not None else loaded.default_skip
        # The warm-up and decay a speedup preset takes when a request leaves them out.
        self.preset_family = loaded.preset_family or PresetFamily()
        # The context length is known once the model is loaded: a new scheduler config carries
        # it (the caller's config is not written to).
        max_len = config.model.max_model_len or loaded.max_model_len
        if max_len > loaded.max_model_len:  # positions past it have no embedding or rotary angle
            raise ValueError(
                f"max_model_len={max_len} is longer than the model's context length "
                f"({loaded.max_model_len} positions, max_position_embeddings of its config)"
            )
        budget = config.scheduler.max_num_batched_tokens or default_step_tokens(
            config.model.torch_device.type
        )
        self.scheduler_config = replace(
            config.scheduler, max_model_len=max_len, max_num_batched_tokens=budget
        )
        self.max_model_len = self.scheduler_config.max_model_len
        num_blocks = self._num_blocks(loaded)
        self.kv_cache = KVCacheManager(num_blocks, config.cache.block_size, self.num_layers)
        self.scheduler = Scheduler(self.scheduler_config, self.kv_cache)
        self.runner = ModelRunner(
            loaded.model, num_blocks, config.cache.block_size, loaded.kv_shape
        )
        self.eos_token_ids = loaded.eos_token_ids
        # False when another process detokenizes (the engine-core process: snapshots carry no
        # text, and stop strings are that process's to find).
        self.detokenize = True
        self._detokenizers: dict[str, IncrementalDetokenizer] = {}
        self.grammars = GrammarCompiler(self.tokenizer, self.runner.vocab_size)
        self.requests = RequestFactory(
            self.tokenizer,
            self.hf_config.vocab_size,
            self.num_layers,
            self.default_skip,
            self.preset_family,
            self.scheduler,
            self.eos_token_ids,
            self.grammars,
        )
        self.resolve_skip(config.skip)  # a bad default fails at start-up, not per request

    def _num_blocks(self, loaded: LoadedModel) -> int:
        cache = self.config.cache
        if cache.num_blocks is not None:
            return cache.num_blocks
        per_block = ModelRunner.bytes_per_block(
            cache.block_size, loaded.kv_shape, self.config.model.torch_dtype
        )
        device = next(loaded.model.parameters()).device
        if device.type == "cuda":
            free_bytes, _ = torch.cuda.mem_get_info(device)
            budget = int(free_bytes * cache.gpu_memory_utilization)
        else:
            budget = int(cache.kv_cache_memory_gib * GIB)
        return num_blocks_for_budget(budget, per_block)

    # ---- requests --------------------------------------------------------------------------

    def resolve_skip(self, skip: SkipConfig | None):
        """The depth schedule for a request's skip setting (None: the engine's default)."""
        return self.requests.resolve_skip(skip)

    def tokenize(self, prompt: str | list[int]) -> list[int]:
        return self.requests.tokenize(prompt)

    def make_request(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        skip: SkipConfig | None = None,
        request_id: str | None = None,
    ) -> Request:
        """Tokenize and validate; raises ValueError naming the problem if it can never run.

        Touches no engine state, so any thread may call it.
        """
        return self.requests.make_request(prompt, params, skip, request_id)

    def add(self, request: Request) -> None:
        """Queue a request built by ``make_request``."""
        self.scheduler.add_request(request)
        if self.tokenizer is not None and self.detokenize:
            params = request.sampling_params
            self._detokenizers[request.request_id] = IncrementalDetokenizer(
                self.tokenizer,
                request.prompt_token_ids,
                params.stop,
                params.include_stop_str_in_output,
            )

    def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        skip: SkipConfig | None = None,
        request_id: str | None = None,
    ) -> str:
        """Validate and queue a request; returns its id."""
        request = self.make_request(prompt, params, skip, request_id)
        self.add(request)
        return request.request_id

    def abort_request(self, request_id: str) -> RequestOutput | None:
        request = self.scheduler.abort_request(request_id)
        detok = self._detokenizers.pop(request_id, None)
        if request is None:
            return None
        return snapshot(request, detok.text if detok else "", [])

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.num_unfinished > 0

    # ---- the step ----------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Schedule, run, update; returns a snapshot of every request that got a token."""
        return self.step_with_stats()[0]

    def step_with_stats(self) -> tuple[list[RequestOutput], StepStats | None]:
        """``step()``, plus the step's figures (None when nothing was scheduled)."""
        start = time.perf_counter()
        updated, stats = self.step_requests()
        outputs = [self._process(request) for request in updated]
        if stats is not None:
            stats.step_seconds = time.perf_counter() - start
        return outputs, stats

    def step_requests(self) -> tuple[list[Request], StepStats | None]:
        """Schedule, run, update; returns the requests that got a token (no snapshots, no
        text) and the step's figures (None when nothing was scheduled)."""
        start, preemptions_before = time.perf_counter(), self.scheduler.num_preemptions
        scheduled = self.scheduler.schedule()
        if scheduled.is_empty:
            return [], None
        result = self.runner.run(scheduled)
        updated = self.scheduler.update(scheduled, result)
        stats = self._step_stats(scheduled, len(result.sampled_token_ids), preemptions_before)
        stats.step_seconds = time.perf_counter() - start
        return updated, stats

    def _step_stats(self, scheduled, num_sampled: int, preemptions_before: int) -> StepStats:
        generated_depths, num_prompt_tokens, depths = [], 0, set()
        for seq in scheduled.sequences:
            prompt_len = len(seq.prompt_token_ids)
            num_prompt = min(max(prompt_len - seq.start_position, 0), len(seq.depths))
            num_prompt_tokens += num_prompt
            generated_depths.extend(seq.depths[num_prompt:])
            depths.update(seq.depths)
        return StepStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_cache_usage=self.kv_cache.usage,
            num_preemptions=self.scheduler.num_preemptions - preemptions_before,
            num_prompt_tokens=num_prompt_tokens,
            num_generation_tokens=num_sampled,
            num_layers=self.num_layers,
            generated_depths=generated_depths,
            num_depth_buckets=len(depths),
            num_sequences=len(scheduled.sequences),
        )

    def _process(self, request: Request) -> RequestOutput:
        """Detokenize the new token and apply stop strings (which end the request)."""
        new_ids = request.output_token_ids[-1:]
        detok = self._detokenizers.get(request.request_id)
        if detok is None:
            return snapshot(request, "", new_ids)
        stop = detok.add_tokens(new_ids)
        if stop is not None and not request.status.is_finished:
            self.scheduler.finish_request(request.request_id, RequestStatus.FINISHED_STOPPED)
            request.stop_reason = stop
        finished = request.status.is_finished
        if finished:
            del self._detokenizers[request.request_id]
        return snapshot(request, detok.visible_text(finished), new_ids)
