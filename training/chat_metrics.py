"""Per-conversation measures of ``skipdecode eval chat``, and their corpus figures with CIs.

- **perplexity**: ``exp(sum NLL / sum tokens)`` over every answer token of every conversation
  (teacher forced; each target token at its SkipDecode depth);
- **ROUGE-L** (F-measure, rouge-score, no stemming) of a generated answer against the base
  model's own full-depth greedy answer to the same prompt;
- **first difference**: the index of the first generated token that differs from that answer
  (the shorter length when one is a prefix of the other, the length when both are equal);
- **repetition**: repeated 4-grams, i.e. 4-grams of an answer that already occurred earlier in
  the same answer, over all 4-grams (corpus level, in percent).

Every interval is a 95% percentile bootstrap over conversations (``bootstrap_interval``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from skipdecode.training.metrics import bootstrap_interval


def first_difference(generated: Sequence[int], reference: Sequence[int]) -> int:
    """Index of the first position where the two token sequences differ."""
    for index, (a, b) in enumerate(zip(generated, reference)):
        if a != b:
            return index
    return min(len(generated), len(reference))


def repeated_ngrams(tokens: Sequence[int], n: int = 4) -> tuple[int, int]:
    """(n-grams that occurred earlier in ``tokens``, all n-grams of ``tokens``)."""
    seen: set[tuple[int, ...]] = set()
    repeated = 0
    total = max(0, len(tokens) - n + 1)
    for start in range(total):
        gram = tuple(tokens[start : start + n])
        repeated += gram in seen
        seen.add(gram)
    return repeated, total


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """ROUGE-L F-measure (0-100) of each hypothesis against its one reference."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return np.asarray(
        [100.0 * scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hypotheses, references)],
        dtype=np.float64,
    )


def ratio_with_ci(
    numerators: np.ndarray, denominators: np.ndarray, transform, resamples: int, seed: int
) -> tuple[float, list[float]]:
    """``transform(sum num / sum den)`` and its bootstrap interval over items."""

    def value(index: np.ndarray) -> float:
        return transform(numerators[index].sum() / max(denominators[index].sum(), 1e-12))

    point = value(np.arange(len(numerators)))
    return point, list(bootstrap_interval(len(numerators), value, resamples, seed))


def mean_with_ci(values: np.ndarray, resamples: int, seed: int) -> tuple[float, list[float]]:
    """The mean and its bootstrap interval over items."""
    interval = bootstrap_interval(len(values), lambda i: float(values[i].mean()), resamples, seed)
    return float(values.mean()), list(interval)


def perplexity(nll: np.ndarray, tokens: np.ndarray, resamples: int, seed: int):
    """Corpus perplexity from per-conversation NLL sums and token counts, with its interval."""
    return ratio_with_ci(nll, tokens, math.exp, resamples, seed)


def repetition(repeated: np.ndarray, total: np.ndarray, resamples: int, seed: int):
    """Percent of repeated 4-grams (corpus level), with its interval."""
    return ratio_with_ci(repeated, total, lambda x: 100.0 * x, resamples, seed)
