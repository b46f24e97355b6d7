"""Prompt logprobs: each prompt token's logprob given its prefix, its rank and the top-n.

Prompt tokens always run every layer, so these are the full-depth model's numbers at any skip
setting. Position ``p`` is scored by the logits of position ``p - 1``; a chunk's last row scores
the first token of the next chunk, so chunked prefill needs no state between steps. Position 0
has no prefix: it gets no entry here (``Request.record_prompt_logprobs`` stores None for it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from skipdecode.model_runner.context import StepLayout
from skipdecode.scheduler import ScheduledSequence, TokenLogprobs

# Logits rows per pass: bounds the fp32 [rows, vocab] buffers (256 x 49152 x 4 B = 48 MiB).
MAX_ROWS_PER_PASS = 256


@dataclass
class PromptScoring:
    """Which rows of a step score which prompt tokens (host side, built once per step)."""

    request_ids: list[str]
    first_positions: list[int]  # prompt position of each request's first scored token
    num_scored: list[int]  # scored positions per request (0 for a one-token prompt)
    num_top: list[int]  # top-n each request asked for
    rows: np.ndarray  # [R] depth-sorted row whose logits score each scored token
    target_ids: np.ndarray  # [R] the prompt token each row scores


def plan_prompt_scoring(
    seqs: Sequence[ScheduledSequence], layout: StepLayout
) -> PromptScoring | None:
    """The scoring plan, or None when no chunk of the step covers prompt logprobs asked for.

    Only prompt positions are scored: a chunk recomputed after preemption also holds generated
    tokens, which are not.
    """
    picked: list[tuple[int, ScheduledSequence, int]] = []  # (index in step, chunk, scored)
    for i, seq in enumerate(seqs):
        prompt_len = len(seq.prompt_token_ids)
        if seq.sampling_params.prompt_logprobs is None or seq.start_position >= prompt_len:
            continue
        # Row k of the chunk (position start + k) scores position start + k + 1.
        last = min(seq.start_position + len(seq.token_ids), prompt_len - 1)
        picked.append((i, seq, max(last - seq.start_position, 0)))
    if not picked:
        return None
    return PromptScoring(
        request_ids=[seq.request_id for _, seq, _ in picked],
        first_positions=[seq.start_position + 1 for _, seq, _ in picked],
        num_scored=[num for _, _, num in picked],
        num_top=[seq.sampling_params.prompt_logprobs or 0 for _, seq, _ in picked],
        rows=np.concatenate(
            [layout.rows_of_flat[layout.chunk_offsets[i] + np.arange(num)] for i, _, num in picked]
        ),
        target_ids=np.concatenate([_targets(seq, num) for _, seq, num in picked]),
    )


def _targets(seq: ScheduledSequence, num_scored: int) -> np.ndarray:
    first = seq.start_position + 1
    return np.asarray(seq.prompt_token_ids[first : first + num_scored], dtype=np.int64)


def score_prompts(
    plan: PromptScoring,
    hidden: torch.Tensor,
    compute_logits: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, tuple[int, list[TokenLogprobs]]]:
    """Score the planned rows of ``hidden`` ([N, hidden], depth-sorted) in fp32.

    Returns, per request, its first scored position and one entry per scored position.
    """
    max_top = max(plan.num_top)
    rows = torch.from_numpy(plan.rows).to(hidden.device)
    targets = torch.from_numpy(plan.target_ids).to(hidden.device)
    chosen, ranks, top_ids, top_lps = [], [], [], []
    for begin in range(0, len(plan.rows), MAX_ROWS_PER_PASS):
        end = begin + MAX_ROWS_PER_PASS
        logprobs = compute_logits(hidden[rows[begin:end]]).float().log_softmax(dim=-1)  # [R, V]
        target_lps = logprobs.gather(1, targets[begin:end, None])  # [R, 1]
        chosen.append(target_lps[:, 0])
        ranks.append((logprobs > target_lps).sum(dim=-1) + 1)
        if max_top > 0:
            top = logprobs.topk(max_top, dim=-1)
            top_ids.append(top.indices)
            top_lps.append(top.values)
    entries = _entries(
        torch.cat(chosen).tolist() if chosen else [],
        torch.cat(ranks).tolist() if ranks else [],
        torch.cat(top_ids).tolist() if top_ids else None,
        torch.cat(top_lps).tolist() if top_lps else None,
    )
    result, begin = {}, 0
    for request_id, first, count, num_top in zip(
        plan.request_ids, plan.first_positions, plan.num_scored, plan.num_top
    ):
        mine = entries[begin : begin + count]
        result[request_id] = (first, [_keep_top(entry, num_top) for entry in mine])
        begin += count
    return result


def _entries(
    chosen: list[float],
    ranks: list[int],
    top_ids: list[list[int]] | None,
    top_lps: list[list[float]] | None,
) -> list[TokenLogprobs]:
    if top_ids is None or top_lps is None:
        return [TokenLogprobs(lp, {}, rank) for lp, rank in zip(chosen, ranks)]
    return [
        TokenLogprobs(lp, dict(zip(ids, lps)), rank)
        for lp, rank, ids, lps in zip(chosen, ranks, top_ids, top_lps)
    ]


def _keep_top(entry: TokenLogprobs, num_top: int) -> TokenLogprobs:
    # The batch's top-n is the largest any request asked for; each keeps its own n (best first).
    if len(entry.top) <= num_top:
        return entry
    return TokenLogprobs(entry.logprob, dict(list(entry.top.items())[:num_top]), entry.rank)
