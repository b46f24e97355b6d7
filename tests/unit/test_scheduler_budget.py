"""The step budget under load: decodes first, a long prompt spread over what they leave.

A request still being prefilled is always the newest running one (it took the whole budget, so
nobody was admitted after it), so "running requests first, in admission order" puts every decode
before any prompt chunk."""

from __future__ import annotations

import pytest
from factories import make_request, make_scheduler
from scheduler_checks import checked_step

from skipdecode.scheduler import DepthSchedule

pytestmark = pytest.mark.timeout(60)
NUM_DECODES, BUDGET, LONG_PROMPT = 64, 96, 700


def test_a_long_prompt_among_64_decodes_never_exceeds_the_budget():
    scheduler = make_scheduler(
        num_blocks=4096, block_size=16, num_layers=4, max_num_seqs=NUM_DECODES + 1,
        max_num_batched_tokens=BUDGET, max_model_len=1024,
    )  # fmt: skip
    full = DepthSchedule.full(4)
    for i in range(NUM_DECODES):
        scheduler.add_request(make_request(f"d{i}", prompt_len=1, max_tokens=200, schedule=full))
    for _ in range(3):  # every short prompt has been prefilled: 64 requests decoding
        checked_step(scheduler)
    assert all(r.output_token_ids for r in scheduler.running)
    scheduler.add_request(make_request("long", prompt_len=LONG_PROMPT, max_tokens=4))
    long_chunks = []
    while "long" in scheduler.requests and not scheduler.requests["long"].output_token_ids:
        out = checked_step(scheduler)
        assert out.num_batched_tokens <= BUDGET
        decodes = [s for s in out.sequences if s.request_id != "long"]
        # Every streaming request gets its token in every step, before any prompt chunk.
        assert len(decodes) == NUM_DECODES and all(len(s.token_ids) == 1 for s in decodes)
        long_chunks += [len(s.token_ids) for s in out.sequences if s.request_id == "long"]
    assert sum(long_chunks) == LONG_PROMPT
    assert max(long_chunks) == BUDGET - NUM_DECODES
