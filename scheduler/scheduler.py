"""Continuous batching with chunked prefill, depth-aware KV allocation and recompute preemption.

Like vLLM v1, the scheduler has no prefill/decode phases: each request has ``num_computed_tokens``
and ``num_tokens``, and a step gives it a chunk of the gap within the token budget. A decode is a
chunk of one; a long prompt spreads over several steps while decodes go on.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

from skipdecode.kv_cache import KVCacheManager
from skipdecode.scheduler.outputs import RunnerOutput, ScheduledSequence, SchedulerOutput
from skipdecode.scheduler.request import Request, RequestStatus, TokenLogprobs

logger = logging.getLogger(__name__)


# Tokens one step computes, all chunks together, when the config leaves it to the device. On CPU
# a step's time grows with its tokens (a 2,048-token prompt chunk takes seconds) and every
# stream waits for the whole step: a small budget bounds inter-token latency under load
# (docs/benchmarks.md).
CPU_STEP_TOKENS = 256
GPU_STEP_TOKENS = 2048


def default_step_tokens(device_type: str) -> int:
    """The step token budget for a model on ``device_type`` ("cpu", "cuda", ...)."""
    return CPU_STEP_TOKENS if device_type == "cpu" else GPU_STEP_TOKENS


@dataclass(frozen=True)
class SchedulerConfig:
    """Limits of one engine step and of one sequence."""

    max_num_seqs: int = 64  # sequences running at once
    # Tokens computed per step (all chunks together); None: default_step_tokens of the device,
    # resolved by the engine.
    max_num_batched_tokens: int | None = 2048
    max_model_len: int | None = None  # prompt + generated tokens; None: the model's length

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            value = getattr(self, name)
            if name != "max_num_seqs" and value is None:
                continue
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"SchedulerConfig.{name} must be an integer >= 1 (got {value!r})")


class Scheduler:
    """Owns the waiting queue, the running list and every request's status and progress.

    KV blocks are owned by the ``KVCacheManager``; this class decides who gets them.
    """

    def __init__(self, config: SchedulerConfig, kv_cache: KVCacheManager) -> None:
        if config.max_model_len is None or config.max_num_batched_tokens is None:
            raise ValueError(
                "Scheduler needs SchedulerConfig.max_model_len and max_num_batched_tokens"
                " resolved to numbers"
            )
        self.config = config
        self.kv_cache = kv_cache
        self.requests: dict[str, Request] = {}
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in admission order; the last is preempted first
        self.num_preemptions = 0
        self._finished_ids: set[str] = set()

    # ---- requests in and out -------------------------------------------------------------

    def check_request(self, request: Request) -> None:
        """Raise ValueError if the request can never run with this configuration."""
        max_len = self.config.max_model_len
        total = request.prompt_len + request.sampling_params.max_tokens
        if total > max_len:
            raise ValueError(
                f"prompt ({request.prompt_len} tokens) + max_tokens"
                f" ({request.sampling_params.max_tokens}) = {total} exceeds the model's context"
                f" length max_model_len={max_len}"
            )
        # The last generated token is sampled, never fed back, so it never gets a KV slot.
        counts = request.schedule.layer_num_tokens(request.prompt_len, total - 1)
        needed = self.kv_cache.num_blocks_needed(None, counts)
        if needed > self.kv_cache.num_blocks:
            raise ValueError(
                f"request needs up to {needed} KV blocks but the cache holds only"
                f" {self.kv_cache.num_blocks}; lower max_tokens or raise the KV cache memory"
            )

    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"duplicate request id {request.request_id!r}")
        self.check_request(request)
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def finish_request(self, request_id: str, status: RequestStatus) -> Request | None:
        """End a request (abort, or a stop found outside the scheduler) and free its blocks."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        elif request.status is RequestStatus.WAITING:
            self.waiting.remove(request)
        request.status = status
        self.kv_cache.free(request_id)
        request.kv_capacity = 0
        self._finished_ids.add(request_id)
        return request

    def abort_request(self, request_id: str) -> Request | None:
        return self.finish_request(request_id, RequestStatus.FINISHED_ABORTED)

    @property
    def num_unfinished(self) -> int:
        return len(self.requests)

    # ---- one step ------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        """Pick this step's chunks: running requests first, then waiting ones in FCFS order."""
        budget = self.config.max_num_batched_tokens
        scheduled: list[ScheduledSequence] = []
        num_preemptions_before = self.num_preemptions
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            if not self._allocate_or_preempt(request, num_new):
                break  # the request itself was preempted: nothing more fits
            scheduled.append(self._chunk(request, num_new))
            budget -= num_new
            index += 1
        # A step that had to preempt admits nobody new: the pool is already too tight.
        can_admit = self.num_preemptions == num_preemptions_before
        while can_admit and self.waiting and budget > 0:
            if len(self.running) >= self.config.max_num_seqs:
                break
            request = self.waiting[0]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            counts = self._layer_counts(request, num_new)
            if not self.kv_cache.can_allocate(request.request_id, counts):
                break
            self._allocate(request, counts)
            self.waiting.popleft()
            request.status = RequestStatus.RUNNING
            if request.first_scheduled_time is None:
                request.first_scheduled_time = time.monotonic()
            self.running.append(request)
            scheduled.append(self._chunk(request, num_new))
            budget -= num_new
        finished, self._finished_ids = self._finished_ids, set()
        return SchedulerOutput(
            sequences=scheduled,
            num_batched_tokens=self.config.max_num_batched_tokens - budget,
            finished_request_ids=finished,
        )

    def _allocate_or_preempt(self, request: Request, num_new: int) -> bool:
        """Allocate the chunk's slots, preempting the newest running requests until it fits.

        Returns False if ``request`` itself had to be preempted.
        """
        if request.num_computed_tokens + num_new <= request.kv_capacity:
            return True  # a decode step needs a new block only every block_size tokens
        counts = self._layer_counts(request, num_new)
        while not self.kv_cache.can_allocate(request.request_id, counts):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is request:
                return False
        self._allocate(request, counts)
        return True

    def _allocate(self, request: Request, counts: list[int]) -> None:
        self.kv_cache.allocate(request.request_id, counts)
        request.kv_capacity = request.schedule.num_tokens_within(
            request.prompt_len, self.kv_cache.layer_capacity(request.request_id)
        )

    def _preempt(self, request: Request) -> None:
        # Recompute preemption: drop all KV; the tokens stay and are recomputed later, each at
        # its original depth (Request.depth), so the cache and the text come out the same.
        self.running.remove(request)
        self.kv_cache.free(request.request_id)
        request.num_computed_tokens = request.kv_capacity = 0
        request.num_preemptions += 1
        request.status = RequestStatus.WAITING
        self.waiting.appendleft(request)
        self.num_preemptions += 1

    def _layer_counts(self, request: Request, num_new: int) -> list[int]:
        end = request.num_computed_tokens + num_new
        return request.schedule.layer_num_tokens(request.prompt_len, end)

    def _chunk(self, request: Request, num_new: int) -> ScheduledSequence:
        start = request.num_computed_tokens
        positions = range(start, start + num_new)
        return ScheduledSequence(
            request_id=request.request_id,
            token_ids=[request.token_id(p) for p in positions],
            start_position=start,
            depths=[request.depth(p) for p in positions],
            warmup_layers=request.schedule.warmup_layers,
            block_tables=self.kv_cache.block_table_array(request.request_id),
            is_sampled=start + num_new == request.num_tokens,
            sampling_params=request.sampling_params,
            prompt_token_ids=request.prompt_token_ids,
            output_token_ids=request.output_token_ids,
            grammar=request.grammar,
        )

    def update(self, scheduled: SchedulerOutput, result: RunnerOutput) -> list[Request]:
        """Record computed chunks and sampled tokens; finish requests that hit a stop.

        Returns the requests that received a token this step (finished ones included).
        """
        for seq in scheduled.sequences:
            request = self.requests.get(seq.request_id)
            if request is not None:
                request.num_computed_tokens += len(seq.token_ids)
        for request_id, (first_position, entries) in result.prompt_logprobs.items():
            request = self.requests.get(request_id)
            if request is not None:
                request.record_prompt_logprobs(first_position, entries)
        updated = []
        for request_id, token_id, logprobs in zip(
            result.sampled_request_ids, result.sampled_token_ids, result.logprobs
        ):
            request = self.requests.get(request_id)
            if request is None:  # aborted while the step ran
                continue
            request.output_token_ids.append(token_id)
            if logprobs is not None:
                request.output_logprobs.append(TokenLogprobs(*logprobs))
            status = self._stop_status(request, token_id)
            if status is not None:
                self.finish_request(request_id, status)
            updated.append(request)
        return updated

    def _stop_status(self, request: Request, token_id: int) -> RequestStatus | None:
        params = request.sampling_params
        if request.grammar is not None and _grammar_done(request, token_id):
            return RequestStatus.FINISHED_STOPPED
        if token_id in params.stop_token_ids:
            request.stop_reason = token_id
            return RequestStatus.FINISHED_STOPPED
        if not params.ignore_eos and token_id in request.eos_token_ids:
            return RequestStatus.FINISHED_STOPPED
        if len(request.output_token_ids) >= params.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        if request.num_tokens >= self.config.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None


def _grammar_done(request: Request, token_id: int) -> bool:
    """Advance the request's grammar; True once the grammar allows nothing more (the text is
    complete, or the grammar failed, which it logs)."""
    grammar = request.grammar
    if not grammar.accept(token_id):
        logger.error(
            "request %s: grammar rejected token %d: %s", request.request_id, token_id, grammar.error
        )
        return True
    return grammar.is_finished
