"""Typed messages between the scheduler and the model runner (no torch tensors here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from skipdecode.scheduler.request import TokenLogprobs
from skipdecode.scheduler.sampling_params import SamplingParams


@dataclass
class ScheduledSequence:
    """One sequence's share of a step: a chunk of consecutive positions to compute."""

    request_id: str
    token_ids: list[int]  # [num_chunk_tokens] ids fed this step
    start_position: int  # position of token_ids[0]
    depths: list[int]  # [num_chunk_tokens] layers each token runs; never increasing
    warmup_layers: int  # w: a token of depth D runs layers [0, w) and [L - (D - w), L)
    # [num_layers, width] int64 KV block ids (each layer's table zero-padded), valid this step
    block_tables: np.ndarray
    is_sampled: bool  # the chunk reaches the last known token: sample the next one
    sampling_params: SamplingParams
    prompt_token_ids: list[int]  # read-only view, for penalties and prompt logprobs
    output_token_ids: list[int]  # read-only view, for penalties
    grammar: Any = (
        None  # structured output: the request's Grammar (skipdecode/structured_output.py)
    )


@dataclass
class SchedulerOutput:
    """Everything the runner needs for one step."""

    sequences: list[ScheduledSequence]
    num_batched_tokens: int  # total chunk tokens over all sequences
    finished_request_ids: set[str] = field(default_factory=set)  # runner drops their state

    @property
    def is_empty(self) -> bool:
        return not self.sequences


@dataclass
class RunnerOutput:
    """What the runner returns: one entry per sampled sequence, in schedule order."""

    sampled_request_ids: list[str]
    sampled_token_ids: list[int]
    # Per sampled sequence: (logprob of the sampled token, {top id: logprob}) or None.
    logprobs: list[tuple[float, dict[int, float]] | None]
    # Per request with prompt logprobs asked whose chunk covers prompt positions: (the prompt
    # position of the first entry, one entry per prompt position the chunk's rows score).
    prompt_logprobs: dict[str, tuple[int, list[TokenLogprobs]]] = field(default_factory=dict)
