"""Small builders for scheduler and KV-cache unit tests (pure Python, no torch).

``ref_depth`` and ``ref_layer_num_tokens`` transcribe DESIGN.md §2 directly, so tests compare the
code against the definition rather than against itself.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from fractions import Fraction
from functools import cache

from skipdecode.kv_cache import KVCacheManager
from skipdecode.scheduler import (
    DepthSchedule,
    Request,
    RunnerOutput,
    SamplingParams,
    ScheduledSequence,
    Scheduler,
    SchedulerConfig,
    SchedulerOutput,
)

# ---- DESIGN.md §2, transcribed ----------------------------------------------------------------


@cache  # exact arithmetic is slow; scheduler tests ask for the same g often
def ref_depth(max_depth: int, min_depth: int, decay_tokens: int, g: int) -> int:
    """D(g) = clamp(round(D_max - (D_max - D_min) * g / T), D_min, D_max), in exact arithmetic."""
    value = Fraction(max_depth) - Fraction((max_depth - min_depth) * g, decay_tokens)
    return min(max(round(value), min_depth), max_depth)


def ref_position_depth(schedule: DepthSchedule, prompt_len: int, position: int) -> int:
    """Prompt tokens run every layer; generated index g = position - prompt_len decays."""
    if position < prompt_len:
        return schedule.num_layers
    s = schedule
    return ref_depth(s.max_depth, s.min_depth, s.decay_tokens, position - prompt_len)


def ref_runs_layer(num_layers: int, warmup: int, depth: int, layer: int) -> bool:
    """A token of depth D runs layers [0, w) and [L - (D - w), L)."""
    return layer in range(warmup) or layer in range(num_layers - (depth - warmup), num_layers)


def ref_depths(schedule: DepthSchedule, prompt_len: int, num_tokens: int) -> list[int]:
    return [ref_position_depth(schedule, prompt_len, p) for p in range(num_tokens)]


def ref_positions_running(schedule: DepthSchedule, depths: list[int], layer: int) -> list[int]:
    """Brute force: the positions whose depth (``depths[p]``) runs ``layer``."""
    L, w = schedule.num_layers, schedule.warmup_layers
    return [p for p, depth in enumerate(depths) if ref_runs_layer(L, w, depth, layer)]


def ref_layer_num_tokens(schedule: DepthSchedule, prompt_len: int, num_tokens: int) -> list[int]:
    depths = ref_depths(schedule, prompt_len, num_tokens)
    return [
        len(ref_positions_running(schedule, depths, layer)) for layer in range(schedule.num_layers)
    ]


def ref_num_blocks(counts: list[int], block_size: int) -> int:
    return sum(math.ceil(n / block_size) for n in counts)


# ---- requests, scheduler, fake runner ---------------------------------------------------------


def make_schedule(
    num_layers: int = 4, warmup: int = 1, max_depth: int = 4, min_depth: int = 2, decay: int = 4
) -> DepthSchedule:
    return DepthSchedule(num_layers, warmup, max_depth, min_depth, decay)


def make_request(
    request_id: str = "r0",
    prompt_len: int = 4,
    max_tokens: int = 8,
    schedule: DepthSchedule | None = None,
    eos_token_ids: tuple[int, ...] = (),
    **params: object,
) -> Request:
    """A request whose prompt is ``prompt_len`` distinct ids (1000, 1001, ...)."""
    return Request(
        request_id=request_id,
        prompt_token_ids=list(range(1000, 1000 + prompt_len)),
        sampling_params=SamplingParams(max_tokens=max_tokens, **params),  # type: ignore[arg-type]
        schedule=schedule if schedule is not None else make_schedule(),
        eos_token_ids=frozenset(eos_token_ids),
    )


def make_scheduler(
    num_blocks: int = 256,
    block_size: int = 4,
    num_layers: int = 4,
    max_num_seqs: int = 8,
    max_num_batched_tokens: int = 64,
    max_model_len: int = 1024,
) -> Scheduler:
    config = SchedulerConfig(
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=max_model_len,
    )
    return Scheduler(config, KVCacheManager(num_blocks, block_size, num_layers))


TokenFn = Callable[[ScheduledSequence], int]


def fake_runner_output(out: SchedulerOutput, token: int | TokenFn = 7) -> RunnerOutput:
    """What a runner would return: one token for each sampled sequence, in schedule order.

    ``token`` is a fixed id, or a function of the scheduled sequence (to script outputs).
    """
    sampled = [seq for seq in out.sequences if seq.is_sampled]
    pick = token if callable(token) else (lambda seq: token)
    return RunnerOutput(
        sampled_request_ids=[seq.request_id for seq in sampled],
        sampled_token_ids=[pick(seq) for seq in sampled],
        logprobs=[None] * len(sampled),
    )


def step(scheduler: Scheduler, token: int | TokenFn = 7) -> SchedulerOutput:
    """One engine step with the fake runner: schedule, 'run', update."""
    out = scheduler.schedule()
    scheduler.update(out, fake_runner_output(out, token))
    return out


def random_schedules(seed: int, count: int) -> list[DepthSchedule]:
    """Valid schedules over a wide range of (L, w, D_max, D_min, T)."""
    rng = random.Random(seed)
    schedules = []
    for _ in range(count):
        num_layers = rng.randint(2, 40)
        warmup = rng.randint(0, min(3, num_layers - 1))
        min_depth = rng.randint(warmup + 1, num_layers)
        max_depth = rng.randint(min_depth, num_layers)
        decay = rng.choice([1, 2, 3, 7, rng.randint(1, 100)])
        schedules.append(DepthSchedule(num_layers, warmup, max_depth, min_depth, decay))
    return schedules
