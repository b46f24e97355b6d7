"""Helpers for the sampler tests: batches, random logits and slow per-row references."""

from __future__ import annotations

from collections import Counter

import torch

from skipdecode.model_runner.sampler import SamplingBatch
from skipdecode.scheduler.sampling_params import SamplingParams

CPU = torch.device("cpu")


def make_batch(
    params: list[SamplingParams],
    vocab_size: int,
    prompts: list[list[int]] | None = None,
    outputs: list[list[int]] | None = None,
    generators: list[torch.Generator | None] | None = None,
) -> SamplingBatch:
    """A batch with empty histories and fresh generators for seeded rows unless given."""
    num_rows = len(params)
    if generators is None:
        generators = [
            None if p.seed is None else torch.Generator(CPU).manual_seed(p.seed) for p in params
        ]
    return SamplingBatch.build(
        params,
        prompts if prompts is not None else [[] for _ in range(num_rows)],
        outputs if outputs is not None else [[] for _ in range(num_rows)],
        generators,
        vocab_size,
        CPU,
    )


def random_logits(num_rows: int, vocab_size: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(num_rows, vocab_size, generator=torch.Generator().manual_seed(seed)) * scale


# ---- per-row references: plain loops, one token at a time ----


def ref_penalize(
    row: torch.Tensor, params: SamplingParams, prompt: list[int], output: list[int]
) -> torch.Tensor:
    """Penalties for one row, with the same fp32 operations per token as the batched code."""
    row = row.clone()
    rep = torch.tensor(params.repetition_penalty, dtype=torch.float32)
    freq = torch.tensor(params.frequency_penalty, dtype=torch.float32)
    pres = torch.tensor(params.presence_penalty, dtype=torch.float32)
    for token in set(prompt) | set(output):
        row[token] = row[token] / rep if row[token] > 0 else row[token] * rep
    for token, count in Counter(output).items():
        row[token] = row[token] - freq * torch.tensor(float(count)) - pres
    return row


def ref_allowed(row: torch.Tensor, params: SamplingParams) -> set[int]:
    """Token ids a random row may draw: temperature, top-k, top-p, then min-p, in float64."""
    order = sorted(range(len(row)), key=lambda t: -float(row[t]))
    logits = row.double() / params.temperature
    if params.top_k > 0:
        order = order[: params.top_k]
    probs = logits[order].softmax(dim=0).tolist()  # renormalized over the top-k
    kept, mass = [], 0.0
    for token, prob in zip(order, probs, strict=True):
        if mass >= params.top_p:
            break
        kept.append((token, prob))
        mass += prob
    max_prob = kept[0][1]
    return {token for token, prob in kept if prob >= params.min_p * max_prob}
