"""Figures the engine reports per step and per finished request (for metrics and benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepStats:
    """One engine step, as seen right after it ran."""

    num_running: int  # requests running after the step
    num_waiting: int  # requests waiting after the step
    kv_cache_usage: float  # fraction of KV blocks held
    num_preemptions: int  # preemptions during this step
    num_prompt_tokens: int  # prompt tokens computed this step (recomputed ones included)
    num_generation_tokens: int  # tokens sampled this step
    num_layers: int  # L of the model
    generated_depths: list[int] = field(default_factory=list)  # depth of each generated token fed
    num_depth_buckets: int = 0  # distinct depths among the step's tokens
    num_sequences: int = 0  # sequences that shared the step
    step_seconds: float = 0.0  # wall time of schedule + run + update

    @property
    def num_layers_computed(self) -> int:
        return sum(self.generated_depths)

    @property
    def num_layers_skipped(self) -> int:
        return self.num_layers * len(self.generated_depths) - self.num_layers_computed


@dataclass
class RequestStats:
    """One finished request's latencies and counters (seconds, monotonic clock)."""

    finish_reason: str
    num_prompt_tokens: int
    num_generation_tokens: int
    queue_seconds: float | None  # arrival -> first scheduled (None if never scheduled)
    time_to_first_token: float | None
    inter_token_latencies: list[float]
    e2e_seconds: float
    theoretical_speedup: float
    num_layers_computed: int
    num_layers_skipped: int
