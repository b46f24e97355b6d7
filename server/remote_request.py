"""The API process's view of the engine-core process and of each request running there."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

from skipdecode.core_protocol import EngineInfo, TokenDelta
from skipdecode.detokenizer import IncrementalDetokenizer
from skipdecode.outputs import RequestOutput
from skipdecode.request_factory import RequestFactory
from skipdecode.scheduler import Request
from skipdecode.stats import RequestStats


class EngineFront:
    """What the API process knows of the engine in the other process (read-only)."""

    def __init__(self, info: EngineInfo) -> None:
        self.tokenizer = info.tokenizer
        self.num_layers = info.num_layers
        self.max_model_len = info.max_model_len
        self.preset_family = info.preset_family
        self.hf_config = SimpleNamespace(vocab_size=info.vocab_size)
        self.pid = info.pid
        self.requests = RequestFactory.detached(
            info.tokenizer,
            info.vocab_size,
            info.logits_size,
            info.num_layers,
            info.default_skip,
            info.preset_family,
            info.scheduler_config,
            info.kv_geometry,
            info.eos_token_ids,
        )
        self.grammars = self.requests.grammars

    def tokenize(self, prompt: str | list[int]) -> list[int]:
        return self.requests.tokenize(prompt)


@dataclass
class RemoteRequest:
    """The API side of one request in the core: its output so far and its latencies."""

    queue: asyncio.Queue
    request: Request
    detokenizer: IncrementalDetokenizer | None
    arrival: float = field(default_factory=time.monotonic)
    token_ids: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    prompt_logprobs: list | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    inter_token: list[float] = field(default_factory=list)

    @property
    def theoretical_speedup(self) -> float:
        if not self.depths:
            return 1.0
        return self.request.schedule.num_layers * len(self.depths) / sum(self.depths)

    def apply(self, delta: TokenDelta, now: float) -> tuple[RequestOutput, bool]:
        """Add one step's tokens; returns the snapshot, and whether a stop string found here
        ended the request (the core does not know: it must be aborted there)."""
        self.token_ids += delta.new_token_ids
        self.depths += delta.depths
        if delta.logprobs is not None:
            self.logprobs += delta.logprobs
        if delta.prompt_logprobs is not None:
            self.prompt_logprobs = delta.prompt_logprobs
        finish_reason, stop_reason = delta.finish_reason, delta.stop_reason
        text, stopped_here = "", False
        if self.detokenizer is not None:
            stop = self.detokenizer.add_tokens(delta.new_token_ids)
            if stop is not None and finish_reason is None:
                finish_reason, stop_reason, stopped_here = "stop", stop, True
            text = self.detokenizer.visible_text(finish_reason is not None)
        if self.first_token_at is None:
            self.first_token_at = now
        else:
            self.inter_token.append(now - self.last_token_at)
        self.last_token_at = now
        return self._snapshot(text, delta.new_token_ids, finish_reason, stop_reason), stopped_here

    def _snapshot(self, text: str, new_ids, finish_reason, stop_reason) -> RequestOutput:
        params = self.request.sampling_params
        return RequestOutput(
            request_id=self.request.request_id,
            prompt_token_ids=self.request.prompt_token_ids,
            token_ids=list(self.token_ids),
            new_token_ids=list(new_ids),
            text=text,
            depths=list(self.depths),
            num_layers=self.request.schedule.num_layers,
            finished=finish_reason is not None,
            finish_reason=finish_reason,
            stop_reason=stop_reason,
            logprobs=list(self.logprobs) if params.logprobs is not None else None,
            theoretical_speedup=self.theoretical_speedup,
            prompt_logprobs=(
                list(self.prompt_logprobs or []) if params.prompt_logprobs is not None else None
            ),
        )

    def stats(self, finish_reason: str, queue_seconds: float | None) -> RequestStats:
        """The request's figures for the metrics, once it ended (or was aborted)."""
        num_layers = self.request.schedule.num_layers
        computed = sum(self.depths)
        first = self.first_token_at
        return RequestStats(
            finish_reason=finish_reason,
            num_prompt_tokens=self.request.prompt_len,
            num_generation_tokens=len(self.token_ids),
            queue_seconds=queue_seconds,
            time_to_first_token=None if first is None else first - self.arrival,
            inter_token_latencies=self.inter_token,
            e2e_seconds=time.monotonic() - self.arrival,
            theoretical_speedup=self.theoretical_speedup,
            num_layers_computed=computed,
            num_layers_skipped=num_layers * len(self.depths) - computed,
        )
