"""A request and its state inside the engine."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from skipdecode.scheduler.sampling_params import SamplingParams
from skipdecode.scheduler.skip import DepthSchedule


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def is_finished(self) -> bool:
        return self not in (RequestStatus.WAITING, RequestStatus.RUNNING)


@dataclass
class TokenLogprobs:
    """Logprob of one sampled (or prompt) token, with the top alternatives."""

    logprob: float
    top: dict[int, float]  # token id -> logprob, best first
    rank: int | None = None  # 1 + tokens rated strictly higher; None where not computed


@dataclass
class Request:
    """One sequence being generated.

    Owns its token ids, status and progress (``num_computed_tokens``). Its KV blocks are owned
    by the KV cache manager, keyed by ``request_id``.
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    schedule: DepthSchedule
    eos_token_ids: frozenset[int] = frozenset()
    arrival_time: float = field(default_factory=time.monotonic)
    first_scheduled_time: float | None = None  # when it first ran (queue time = this - arrival)
    output_token_ids: list[int] = field(default_factory=list)
    output_logprobs: list[TokenLogprobs] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprobs | None] = field(default_factory=list)  # per position
    num_computed_tokens: int = 0  # positions whose KV exists (for every layer they run)
    # Positions the request's KV blocks hold on every layer they run (the scheduler's record:
    # no allocation is needed until a chunk goes past it).
    kv_capacity: int = 0
    num_preemptions: int = 0
    status: RequestStatus = RequestStatus.WAITING
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    # Structured output: a Grammar the scheduler advances with each sampled token (None: free).
    grammar: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.prompt_token_ids:
            raise ValueError(f"request {self.request_id!r}: prompt_token_ids must not be empty")

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    def token_id(self, position: int) -> int:
        if position < self.prompt_len:
            return self.prompt_token_ids[position]
        return self.output_token_ids[position - self.prompt_len]

    def depth(self, position: int) -> int:
        """Layers the token at ``position`` runs: all for prompt tokens, else ``D(g)``."""
        if position < self.prompt_len:
            return self.schedule.num_layers
        return self.schedule.depth(position - self.prompt_len)

    def record_prompt_logprobs(self, first_position: int, entries: list[TokenLogprobs]) -> None:
        """Store the logprobs of prompt positions ``first_position, first_position + 1, ...``.

        Position 0 has no prefix to score it: it holds None. Positions already held are kept: a
        prompt recomputed after preemption scores them again with the same numbers.
        """
        if not self.prompt_logprobs:
            self.prompt_logprobs.append(None)
        for position, entry in enumerate(entries, first_position):
            if position == len(self.prompt_logprobs):
                self.prompt_logprobs.append(entry)

    @property
    def output_depths(self) -> list[int]:
        """Depth of each generated token (the layers it runs when fed back, DESIGN.md §2)."""
        return self.schedule.depths(len(self.output_token_ids))

    @property
    def theoretical_speedup(self) -> float:
        return self.schedule.theoretical_speedup(len(self.output_token_ids))

    @property
    def finish_reason(self) -> str | None:
        return self.status.value if self.status.is_finished else None
