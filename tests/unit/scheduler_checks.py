"""Step checker and drivers shared by the scheduler tests (DESIGN.md §2, §4 invariants)."""

from __future__ import annotations

import math

from factories import (
    TokenFn,
    fake_runner_output,
    ref_layer_num_tokens,
    ref_position_depth,
)

from skipdecode.scheduler import (
    RequestStatus,
    Scheduler,
    SchedulerOutput,
)


def check_output(scheduler: Scheduler, out: SchedulerOutput) -> None:
    """Everything a step must satisfy, checked before the update."""
    config, kv = scheduler.config, scheduler.kv_cache
    assert out.num_batched_tokens == sum(len(s.token_ids) for s in out.sequences)
    assert out.num_batched_tokens <= config.max_num_batched_tokens
    assert len(scheduler.running) <= config.max_num_seqs
    ids = [s.request_id for s in out.sequences]
    assert len(ids) == len(set(ids))
    for seq in out.sequences:
        req = scheduler.requests[seq.request_id]
        start, end = seq.start_position, seq.start_position + len(seq.token_ids)
        assert req.status is RequestStatus.RUNNING
        assert start == req.num_computed_tokens and start < end <= req.num_tokens
        assert seq.token_ids == (req.prompt_token_ids + req.output_token_ids)[start:end]
        expected_depths = [
            ref_position_depth(req.schedule, req.prompt_len, p) for p in range(start, end)
        ]
        assert seq.depths == expected_depths
        assert seq.is_sampled == (end == req.num_tokens)
        assert seq.warmup_layers == req.schedule.warmup_layers
        counts = ref_layer_num_tokens(req.schedule, req.prompt_len, end)
        tables = kv.block_tables(seq.request_id)
        assert [len(t) for t in tables] == [math.ceil(n / kv.block_size) for n in counts]
        # The step's array is the same tables, each zero-padded to the longest.
        width = max(len(t) for t in tables)
        assert seq.block_tables.shape == (len(tables), width)
        assert seq.block_tables.tolist() == [t + [0] * (width - len(t)) for t in tables]
    held = [b for rid in scheduler.requests for t in kv.block_tables(rid) for b in t]
    assert len(held) == len(set(held))  # no block owned twice
    assert kv.num_free_blocks + len(held) == kv.num_blocks
    for req in scheduler.waiting:
        assert req.status is RequestStatus.WAITING
        assert req.num_computed_tokens == 0 and kv.num_held_blocks(req.request_id) == 0


def checked_step(scheduler: Scheduler, token: int | TokenFn = 7) -> SchedulerOutput:
    out = scheduler.schedule()
    check_output(scheduler, out)
    scheduler.update(out, fake_runner_output(out, token))
    return out


def run_to_end(
    scheduler: Scheduler, token: int | TokenFn = 7, max_steps: int = 5000
) -> list[SchedulerOutput]:
    outputs = []
    while scheduler.num_unfinished:
        outputs.append(checked_step(scheduler, token))
        assert len(outputs) < max_steps, "scheduler made no progress"
    outputs.append(scheduler.schedule())  # reports the last finished ids
    assert scheduler.kv_cache.num_free_blocks == scheduler.kv_cache.num_blocks
    return outputs


def chunks_of(outputs: list[SchedulerOutput], request_id: str) -> list[tuple[int, int, bool]]:
    """(start, length, is_sampled) of each chunk the request got, in step order."""
    return [
        (s.start_position, len(s.token_ids), s.is_sampled)
        for out in outputs
        for s in out.sequences
        if s.request_id == request_id
    ]


def scripted(script: list[int]) -> TokenFn:
    """Sample script[g] as the g-th generated token."""
    return lambda seq: script[len(seq.output_token_ids)]


# ---- admission ------------------------------------------------------------------------------
