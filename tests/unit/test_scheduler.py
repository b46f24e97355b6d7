"""Continuous batching: admission, token budget, chunked prefill, stops, aborts, preemption.

Every step goes through ``checked_step``, which checks each scheduled chunk against DESIGN.md
(§2 depths, §4 per-layer block tables) and the pool against its invariants before a fake runner
"samples" a token for each sampled sequence.
"""

from __future__ import annotations

import random

import pytest
from factories import (
    fake_runner_output,
    make_request,
    make_schedule,
    make_scheduler,
    ref_layer_num_tokens,
    ref_num_blocks,
)
from scheduler_checks import checked_step, chunks_of, run_to_end, scripted

from skipdecode.scheduler import (
    DepthSchedule,
    RequestStatus,
)

# A scheduler bug can loop forever inside schedule(); fail fast instead.
pytestmark = pytest.mark.timeout(30)


def test_fcfs_admission_order_and_max_num_seqs():
    scheduler = make_scheduler(max_num_seqs=2)
    max_tokens = [5, 2, 4, 1, 3, 2]
    for i, n in enumerate(max_tokens):
        scheduler.add_request(make_request(f"r{i}", prompt_len=3, max_tokens=n))
    admitted: list[str] = []
    peak = 0
    while scheduler.num_unfinished:
        out = checked_step(scheduler)
        assert len(out.sequences) <= 2
        peak = max(peak, len(out.sequences))
        admitted += [s.request_id for s in out.sequences if s.request_id not in admitted]
    assert admitted == [f"r{i}" for i in range(6)]
    assert peak == 2
    for i in range(len(max_tokens)):
        assert scheduler.kv_cache.num_held_blocks(f"r{i}") == 0


def test_fcfs_does_not_let_a_smaller_request_jump_the_queue():
    # Full depth, 4 layers, blocks of 4: r0's prompt takes 2 blocks a layer (8 of 12), so r1's
    # prompt (8 more) waits. r2's prompt needs only 4, which are free, but it arrived later.
    scheduler = make_scheduler(num_blocks=12, block_size=4, num_layers=4)
    full = DepthSchedule.full(4)
    scheduler.add_request(make_request("r0", prompt_len=8, max_tokens=2, schedule=full))
    scheduler.add_request(make_request("r1", prompt_len=8, max_tokens=2, schedule=full))
    scheduler.add_request(make_request("r2", prompt_len=1, max_tokens=2, schedule=full))
    checked_step(scheduler)
    assert scheduler.kv_cache.num_free_blocks == 4
    assert [r.request_id for r in scheduler.waiting] == ["r1", "r2"]
    order: list[str] = ["r0"]
    for out in run_to_end(scheduler):
        order += [s.request_id for s in out.sequences if s.request_id not in order]
    assert order == ["r0", "r1", "r2"]


def test_duplicate_request_id_is_rejected():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("r0"))
    with pytest.raises(ValueError, match="duplicate"):
        scheduler.add_request(make_request("r0", prompt_len=2))
    assert [r.request_id for r in scheduler.waiting] == ["r0"]
    assert scheduler.requests["r0"].prompt_len == 4


def test_request_longer_than_max_model_len_is_rejected():
    scheduler = make_scheduler(max_model_len=12)
    with pytest.raises(ValueError, match="max_model_len"):
        scheduler.add_request(make_request("r0", prompt_len=4, max_tokens=9))
    assert scheduler.num_unfinished == 0 and not scheduler.waiting
    scheduler.check_request(make_request("r1", prompt_len=4, max_tokens=8))


def max_tokens_that_fit(schedule: DepthSchedule, prompt_len: int, num_blocks: int, bs: int) -> int:
    """Brute force: the largest max_tokens whose KV fits the pool (the last token is never fed)."""
    max_tokens = 1
    while True:
        counts = ref_layer_num_tokens(schedule, prompt_len, prompt_len + max_tokens)
        if ref_num_blocks(counts, bs) > num_blocks:
            return max_tokens
        max_tokens += 1


def test_request_needing_more_blocks_than_the_pool_is_rejected_and_the_largest_fit_runs():
    schedule = make_schedule(num_layers=4, warmup=1, max_depth=4, min_depth=2, decay=4)
    scheduler = make_scheduler(num_blocks=20, block_size=2, num_layers=4)
    limit = max_tokens_that_fit(schedule, prompt_len=4, num_blocks=20, bs=2)
    with pytest.raises(ValueError, match="KV blocks"):
        scheduler.add_request(make_request("big", 4, limit + 1, schedule))
    assert scheduler.num_unfinished == 0
    scheduler.add_request(make_request("fits", 4, limit, schedule))
    run_to_end(scheduler)  # it runs alone to the end without preempting itself
    assert scheduler.num_preemptions == 0


# ---- budget and chunked prefill -----------------------------------------------------------------


def test_chunked_prefill_runs_alongside_a_decode():
    scheduler = make_scheduler(max_num_batched_tokens=8)
    scheduler.add_request(make_request("dec", prompt_len=2, max_tokens=20))
    checked_step(scheduler)  # dec: prefill of 2, samples its first token
    scheduler.add_request(make_request("long", prompt_len=30, max_tokens=3))
    outputs = [checked_step(scheduler) for _ in range(6)]
    # dec keeps one token a step; long gets the rest of the budget until its prompt is done.
    assert chunks_of(outputs, "dec") == [(2 + i, 1, True) for i in range(6)]
    assert chunks_of(outputs, "long") == [
        (0, 7, False),
        (7, 7, False),
        (14, 7, False),
        (21, 7, False),
        (28, 2, True),
        (30, 1, True),
    ]
    assert all(out.num_batched_tokens <= 8 for out in outputs)


def test_is_sampled_only_on_the_chunk_that_reaches_the_last_token():
    scheduler = make_scheduler(max_num_batched_tokens=4)
    scheduler.add_request(make_request("r0", prompt_len=10, max_tokens=3))
    outputs = run_to_end(scheduler)
    assert chunks_of(outputs, "r0") == [
        (0, 4, False),
        (4, 4, False),
        (8, 2, True),
        (10, 1, True),
        (11, 1, True),
    ]


def test_chunk_depths_are_full_for_the_prompt_and_decay_for_generated_tokens():
    L = 6
    schedule = make_schedule(num_layers=L, warmup=1, max_depth=5, min_depth=2, decay=6)
    scheduler = make_scheduler(num_layers=L, max_num_batched_tokens=3)
    scheduler.add_request(make_request("r0", prompt_len=5, max_tokens=12, schedule=schedule))
    depth_at: dict[int, int] = {}
    for out in run_to_end(scheduler):
        for seq in out.sequences:
            depth_at.update(enumerate(seq.depths, start=seq.start_position))
    positions = sorted(depth_at)
    assert positions == list(range(5 + 12 - 1))  # the last token is sampled, never fed
    # D(g) = round(5 - 3g/6) for g = 0..10: 5, 4 (4.5 rounds to even), 4, 4 (3.5), 3, 2 (2.5), 2...
    assert [depth_at[p] for p in positions] == [L] * 5 + [5, 4, 4, 4, 3, 2, 2, 2, 2, 2, 2]


@pytest.mark.parametrize("seed", range(4))
def test_random_workload_respects_limits_every_step(seed):
    rng = random.Random(seed)
    L, block_size = 5, rng.choice([1, 2, 4])
    pending = []
    for i in range(12):
        min_depth = rng.randint(2, L)
        schedule = make_schedule(L, 1, rng.randint(min_depth, L), min_depth, rng.randint(1, 9))
        pending.append(make_request(f"r{i}", rng.randint(1, 30), rng.randint(1, 30), schedule))
    # A pool the largest request fits in, small enough that several requests compete for it.
    largest = max(
        ref_num_blocks(
            ref_layer_num_tokens(r.schedule, r.prompt_len, r.num_tokens + 30), block_size
        )
        for r in pending
    )
    scheduler = make_scheduler(
        num_blocks=largest + rng.randint(0, largest),
        block_size=block_size,
        num_layers=L,
        max_num_seqs=rng.randint(1, 5),
        max_num_batched_tokens=rng.randint(4, 24),
        max_model_len=64,
    )
    reported: list[str] = []
    steps = 0
    while pending or scheduler.num_unfinished:
        if pending and rng.random() < 0.4:
            scheduler.add_request(pending.pop(0))
        out = checked_step(scheduler)
        reported += out.finished_request_ids
        steps += 1
        assert steps < 5000
    reported += scheduler.schedule().finished_request_ids
    assert sorted(reported) == sorted(f"r{i}" for i in range(12))  # each reported once
    assert scheduler.kv_cache.num_free_blocks == scheduler.kv_cache.num_blocks


# ---- stops -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "script", "reason", "output", "stop_reason"),
    [
        ({}, [7] * 5, "length", [7] * 5, None),
        ({"eos_token_ids": (2,)}, [7, 7, 2, 7, 7], "stop", [7, 7, 2], None),
        (
            {"eos_token_ids": (2,), "ignore_eos": True},
            [7, 7, 2, 7, 7],
            "length",
            [7, 7, 2, 7, 7],
            None,
        ),
        ({"stop_token_ids": (9,)}, [7, 9, 7, 7, 7], "stop", [7, 9], 9),
        ({"stop_token_ids": (9,), "ignore_eos": True}, [7, 9, 7, 7, 7], "stop", [7, 9], 9),
    ],
)
def test_stop_conditions(kwargs, script, reason, output, stop_reason):
    scheduler = make_scheduler()
    request = make_request("r0", prompt_len=3, max_tokens=5, **kwargs)
    scheduler.add_request(request)
    outputs = run_to_end(scheduler, scripted(script))
    assert request.finish_reason == reason
    assert request.output_token_ids == output
    assert request.stop_reason == stop_reason
    assert sum(out.finished_request_ids == {"r0"} for out in outputs) == 1


def test_request_filling_max_model_len_stops_there():
    scheduler = make_scheduler(max_model_len=12)
    request = make_request("r0", prompt_len=4, max_tokens=8)
    scheduler.add_request(request)
    outputs = run_to_end(scheduler)
    assert request.finish_reason == "length"
    assert request.num_tokens == 12
    ends = [s.start_position + len(s.token_ids) for out in outputs for s in out.sequences]
    assert max(ends) == 11  # positions 0..10 are fed; the 12th token is only sampled


def test_finished_ids_are_reported_once_in_the_next_output():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", prompt_len=2, max_tokens=1))
    scheduler.add_request(make_request("b", prompt_len=2, max_tokens=3))
    first = checked_step(scheduler)
    assert first.finished_request_ids == set()
    assert scheduler.requests.keys() == {"b"}  # a finished in that step's update
    assert checked_step(scheduler).finished_request_ids == {"a"}
    assert checked_step(scheduler).finished_request_ids == set()
    assert scheduler.schedule().finished_request_ids == {"b"}
    assert scheduler.schedule().finished_request_ids == set()


# ---- aborts ----------------------------------------------------------------------------------


def test_abort_waiting_and_running_requests():
    scheduler = make_scheduler(max_num_seqs=1)
    a, b = make_request("a", max_tokens=10), make_request("b", max_tokens=10)
    c = make_request("c", max_tokens=3)
    for request in (a, b, c):
        scheduler.add_request(request)
    checked_step(scheduler)
    assert a.status is RequestStatus.RUNNING and b.status is RequestStatus.WAITING
    assert scheduler.abort_request("b") is b
    assert b.finish_reason == "abort" and b not in scheduler.waiting
    assert checked_step(scheduler).finished_request_ids == {"b"}
    assert scheduler.kv_cache.num_held_blocks("a") > 0
    assert scheduler.abort_request("a") is a
    assert a.finish_reason == "abort" and a not in scheduler.running
    assert scheduler.kv_cache.num_held_blocks("a") == 0
    assert scheduler.kv_cache.num_free_blocks == scheduler.kv_cache.num_blocks
    assert scheduler.abort_request("a") is None  # already gone
    outputs = run_to_end(scheduler)
    assert outputs[0].finished_request_ids == {"a"}
    assert all(s.request_id == "c" for out in outputs for s in out.sequences)
    assert c.finish_reason == "length"
    assert len(a.output_token_ids) == 2 and b.output_token_ids == []


def test_abort_while_a_step_runs_drops_its_token():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", max_tokens=5))
    out = scheduler.schedule()
    scheduler.abort_request("a")
    updated = scheduler.update(out, fake_runner_output(out))
    assert updated == []
    assert scheduler.kv_cache.num_free_blocks == scheduler.kv_cache.num_blocks
    assert scheduler.schedule().finished_request_ids == {"a"}
