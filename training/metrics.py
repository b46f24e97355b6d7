"""Multi-reference BLEU (sacrebleu) and ROUGE-L (rouge-score), grouped by MR, with bootstrap CIs.

One hypothesis per MR, scored against all of that MR's references:

- BLEU: sacrebleu's corpus BLEU (13a tokenization, exp smoothing) with a variable number of
  references per MR. Per-MR sufficient statistics (n-gram matches and totals, hypothesis length,
  closest reference length) are summed, which is exactly how sacrebleu computes corpus BLEU, and
  lets the bootstrap resample MRs cheaply.
- ROUGE-L: F-measure (rouge-score, no stemming); per MR the best over its references, then the
  mean over MRs. Both scores are on a 0..100 scale.
- 95% intervals: percentile bootstrap over MRs (resampled with replacement, seeded).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

BLEU_ORDER = 4


@dataclass(frozen=True)
class Scores:
    """Corpus scores of one system on one set of MRs (0..100)."""

    bleu: float
    bleu_ci: tuple[float, float]
    rouge_l: float
    rouge_l_ci: tuple[float, float]
    num_mrs: int


def _bleu_metric():
    from sacrebleu.metrics import BLEU

    return BLEU(effective_order=True)  # counts are the same; this silences a warning


def bleu_statistics(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """[N, 2 * 4 + 2] per-MR counts: matches 1..4, totals 1..4, hypothesis and reference length."""
    metric = _bleu_metric()
    rows = []
    for hypothesis, refs in zip(hypotheses, references, strict=True):
        score = metric.sentence_score(hypothesis, list(refs))
        rows.append([*score.counts, *score.totals, score.sys_len, score.ref_len])
    return np.asarray(rows, dtype=np.int64).reshape(len(rows), 2 * BLEU_ORDER + 2)


def bleu_from_statistics(stats: np.ndarray) -> float:
    """Corpus BLEU from per-MR statistics (summed over rows)."""
    from sacrebleu.metrics import BLEU

    total = stats.sum(axis=0).tolist()
    score = BLEU.compute_bleu(
        correct=total[:BLEU_ORDER],
        total=total[BLEU_ORDER : 2 * BLEU_ORDER],
        sys_len=total[-2],
        ref_len=total[-1],
        smooth_method="exp",
    )
    return float(score.score)


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Multi-reference corpus BLEU, one hypothesis per MR."""
    return bleu_from_statistics(bleu_statistics(hypotheses, references))


def rouge_l_per_mr(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """[N] ROUGE-L F (0..100) per MR: the best over that MR's references."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    best = [
        max(scorer.score(ref, hypothesis)["rougeL"].fmeasure for ref in refs)
        for hypothesis, refs in zip(hypotheses, references, strict=True)
    ]
    return 100.0 * np.asarray(best, dtype=np.float64)


def bootstrap_interval(
    num_items: int,
    statistic: Callable[[np.ndarray], float],
    num_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of ``statistic(indices)`` over resamples of ``range(num_items)``."""
    if num_resamples <= 0 or num_items == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, num_items, size=num_items)) for _ in range(num_resamples)]
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return (float(low), float(high))


def score_corpus(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    num_resamples: int = 1000,
    seed: int = 0,
) -> Scores:
    """BLEU and ROUGE-L with bootstrap intervals; one hypothesis per MR, refs grouped by MR."""
    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError("need one hypothesis per MR and at least one MR")
    stats = bleu_statistics(hypotheses, references)
    rouge = rouge_l_per_mr(hypotheses, references)
    n = len(hypotheses)
    return Scores(
        bleu=bleu_from_statistics(stats),
        bleu_ci=bootstrap_interval(
            n, lambda i: bleu_from_statistics(stats[i]), num_resamples, seed
        ),
        rouge_l=float(rouge.mean()),
        rouge_l_ci=bootstrap_interval(n, lambda i: float(rouge[i].mean()), num_resamples, seed),
        num_mrs=n,
    )
