"""Recompute preemption at the original depths, and KV blocks saved by skipping."""

from __future__ import annotations

import math

import pytest
from factories import (
    fake_runner_output,
    make_request,
    make_schedule,
    make_scheduler,
    ref_layer_num_tokens,
    ref_num_blocks,
    ref_position_depth,
)
from scheduler_checks import check_output

from skipdecode.scheduler import (
    DepthSchedule,
    Request,
    RequestStatus,
    ScheduledSequence,
    Scheduler,
    SchedulerOutput,
    SkipConfig,
)

# A scheduler bug can loop forever inside schedule(); fail fast instead.
pytestmark = pytest.mark.timeout(30)


# ---- preemption ------------------------------------------------------------------------------


def run_recording(
    scheduler: Scheduler, requests: list[Request]
) -> tuple[list[SchedulerOutput], dict[tuple[str, int], set[int]]]:
    """Run to the end, checking every preemption; returns outputs and depths seen per position."""
    for request in requests:
        scheduler.add_request(request)
    outputs = []
    depths_seen: dict[tuple[str, int], set[int]] = {}
    while scheduler.num_unfinished:
        running_before = list(scheduler.running)
        preemptions_before = scheduler.num_preemptions
        out = scheduler.schedule()
        num_victims = scheduler.num_preemptions - preemptions_before
        if num_victims:
            victims = running_before[len(running_before) - num_victims :]  # the newest ones
            for victim in victims:
                assert victim.status is RequestStatus.WAITING
                assert victim.num_computed_tokens == 0
                assert scheduler.kv_cache.num_held_blocks(victim.request_id) == 0
                assert victim.request_id not in [s.request_id for s in out.sequences]
            assert list(scheduler.waiting)[:num_victims] == victims  # at the front, FCFS kept
        check_output(scheduler, out)
        for seq in out.sequences:
            for position, depth in enumerate(seq.depths, start=seq.start_position):
                depths_seen.setdefault((seq.request_id, position), set()).add(depth)
        scheduler.update(out, fake_runner_output(out, lambda seq: 100 + len(seq.output_token_ids)))
        outputs.append(out)
        assert len(outputs) < 5000
    assert scheduler.kv_cache.num_free_blocks == scheduler.kv_cache.num_blocks
    return outputs, depths_seen


def preemption_requests() -> list[Request]:
    schedule = make_schedule(num_layers=4, warmup=1, max_depth=4, min_depth=2, decay=4)
    return [make_request(f"r{i}", prompt_len=4, max_tokens=12, schedule=schedule) for i in range(3)]


def test_preemption_recomputes_at_the_original_depths():
    # Each request alone needs 23 blocks (brute force below); the pool of 30 cannot hold two.
    # Two run at once; r2 waits behind them, so a victim must go in front of it.
    schedule = preemption_requests()[0].schedule
    alone = ref_num_blocks(ref_layer_num_tokens(schedule, 4, 4 + 12 - 1), 2)
    assert alone <= 30 < 2 * alone
    tight = make_scheduler(
        num_blocks=30, block_size=2, num_layers=4, max_num_seqs=2, max_num_batched_tokens=4
    )
    requests = preemption_requests()
    outputs, depths_seen = run_recording(tight, requests)
    assert tight.num_preemptions >= 1
    assert requests[1].num_preemptions >= 1 and requests[0].num_preemptions == 0
    assert all(r.finish_reason == "length" for r in requests)

    roomy = make_scheduler(
        num_blocks=200, block_size=2, num_layers=4, max_num_seqs=2, max_num_batched_tokens=4
    )
    reference = preemption_requests()
    _, depths_unpreempted = run_recording(roomy, reference)
    assert roomy.num_preemptions == 0
    # Same depth at every position, however often it was computed, as in an unpreempted run.
    assert depths_seen.keys() == depths_unpreempted.keys()
    for key, depths in depths_seen.items():
        assert depths == depths_unpreempted[key] and len(depths) == 1
    assert [r.output_token_ids for r in requests] == [r.output_token_ids for r in reference]

    # The victim's last recompute ran in several chunks and fed its generated tokens again at
    # their decayed depths (check_output compared each chunk with D(g)).
    r1 = outputs_for(outputs, "r1")
    last_restart = max(i for i, seq in enumerate(r1) if seq.start_position == 0)
    assert last_restart > 0
    redo = []
    for seq in r1[last_restart:]:
        redo.append(seq)
        if seq.is_sampled:
            break
    assert len(redo) >= 2
    redone_depths = [d for seq in redo for d in seq.depths]
    assert len(redone_depths) > 4  # beyond the prompt
    assert min(redone_depths) < 4  # not full depth


def outputs_for(outputs: list[SchedulerOutput], request_id: str) -> list[ScheduledSequence]:
    return [s for out in outputs for s in out.sequences if s.request_id == request_id]


# ---- KV accounting ----------------------------------------------------------------------------


def blocks_held_before_finishing(schedule: DepthSchedule, num_layers: int) -> int:
    """Run one request (prompt 16, 256 tokens) and read its blocks at its last step."""
    scheduler = make_scheduler(
        num_blocks=4096, block_size=16, num_layers=num_layers, max_model_len=512
    )
    request = make_request("r0", prompt_len=16, max_tokens=256, schedule=schedule)
    scheduler.add_request(request)
    held = 0
    while scheduler.num_unfinished:
        out = scheduler.schedule()
        held = scheduler.kv_cache.num_held_blocks("r0")
        scheduler.update(out, fake_runner_output(out))
    assert len(request.output_token_ids) == 256
    return held


def test_skipping_saves_kv_blocks_in_proportion_to_layers_saved():
    L = 24
    schedule = SkipConfig.for_speedup(3, decay_tokens=256).resolve(L)
    depth_sum = sum(ref_position_depth(schedule, 0, g) for g in range(256))
    assert abs(L * 256 / depth_sum / 3 - 1) <= 0.05  # the premise: ~3x over 256 tokens
    skip = blocks_held_before_finishing(schedule, L)
    full = blocks_held_before_finishing(DepthSchedule.full(L), L)
    assert full == L * math.ceil((16 + 255) / 16)
    assert skip == ref_num_blocks(ref_layer_num_tokens(schedule, 16, 16 + 255), 16)
    assert skip <= 0.45 * full
