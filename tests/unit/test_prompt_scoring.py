"""Which rows score which prompt tokens, and how a request stores the scores (no model)."""

from __future__ import annotations

from skipdecode.model_runner.context import sort_by_start_layer
from skipdecode.model_runner.prompt_logprobs import plan_prompt_scoring
from skipdecode.scheduler import (
    DepthSchedule,
    Request,
    SamplingParams,
    ScheduledSequence,
    SkipConfig,
    TokenLogprobs,
)

NUM_LAYERS = 8


def chunk(
    request_id: str,
    prompt: list[int],
    outputs: list[int],
    start: int,
    num_tokens: int,
    depths: list[int],
    prompt_logprobs: int | None = 2,
) -> ScheduledSequence:
    tokens = prompt + outputs
    return ScheduledSequence(
        request_id=request_id,
        token_ids=tokens[start : start + num_tokens],
        start_position=start,
        depths=depths,
        warmup_layers=0,
        block_tables=[],
        is_sampled=start + num_tokens == len(tokens),
        sampling_params=SamplingParams(prompt_logprobs=prompt_logprobs),
        prompt_token_ids=prompt,
        output_token_ids=outputs,
    )


def test_rows_follow_the_depth_sorted_layout_and_stop_at_the_prompt():
    # A skipping decode (depth 3) comes first in the step but sorts after the full-depth rows.
    decode = chunk("decode", [1, 2], [3, 4], 3, 1, [3], prompt_logprobs=None)
    middle = chunk("middle", [10, 11, 12, 13, 14, 15], [], 2, 3, [NUM_LAYERS] * 3)
    # Recomputed after preemption: the chunk holds the 4-token prompt and 2 generated tokens.
    recomputed = chunk("recomputed", [20, 21, 22, 23], [24, 25], 0, 6, [NUM_LAYERS] * 6)
    seqs = [decode, middle, recomputed]
    layout = sort_by_start_layer([s.depths for s in seqs], [0, 0, 0], NUM_LAYERS)
    assert layout.rows_of_flat[0] == 9  # the decode row went last
    plan = plan_prompt_scoring(seqs, layout)
    assert plan is not None
    assert plan.request_ids == ["middle", "recomputed"]
    assert plan.first_positions == [3, 1]
    # middle: positions 2, 3, 4 score prompt tokens 3, 4, 5 (its next chunk's first token too).
    # recomputed: positions 0..2 score prompt tokens 1..3; the generated tokens are not scored.
    assert plan.num_scored == [3, 3]
    assert plan.target_ids.tolist() == [13, 14, 15, 21, 22, 23]
    assert plan.rows.tolist() == [0, 1, 2, 3, 4, 5]  # flat 1..3 and 4..6, shifted by the decode


def test_nothing_to_plan_without_prompt_logprobs_or_past_the_prompt():
    plain = chunk("plain", [1, 2, 3], [], 0, 3, [NUM_LAYERS] * 3, prompt_logprobs=None)
    decoding = chunk("decoding", [1, 2, 3], [4], 3, 1, [NUM_LAYERS])
    seqs = [plain, decoding]
    layout = sort_by_start_layer([s.depths for s in seqs], [0, 0], NUM_LAYERS)
    assert plan_prompt_scoring(seqs, layout) is None


def test_a_one_token_prompt_is_planned_with_nothing_to_score():
    seqs = [chunk("one", [7], [], 0, 1, [NUM_LAYERS])]
    layout = sort_by_start_layer([s.depths for s in seqs], [0], NUM_LAYERS)
    plan = plan_prompt_scoring(seqs, layout)
    assert plan is not None and plan.num_scored == [0] and len(plan.rows) == 0


def entries(*logprobs: float) -> list[TokenLogprobs]:
    return [TokenLogprobs(lp, {}, 1) for lp in logprobs]


def test_a_recomputed_prompt_is_not_stored_twice():
    schedule: DepthSchedule = SkipConfig().resolve(NUM_LAYERS)
    request = Request("r", [1, 2, 3, 4, 5], SamplingParams(prompt_logprobs=0), schedule)
    request.record_prompt_logprobs(1, entries(-1.0, -2.0))  # chunk [0, 2): positions 1, 2
    request.record_prompt_logprobs(3, entries(-3.0, -4.0))  # chunk [2, 5): positions 3, 4
    # Preempted, then recomputed from position 0 in one chunk.
    request.record_prompt_logprobs(1, entries(-9.0, -9.0, -9.0, -9.0))
    assert request.prompt_logprobs[0] is None
    assert [e.logprob for e in request.prompt_logprobs[1:]] == [-1.0, -2.0, -3.0, -4.0]
