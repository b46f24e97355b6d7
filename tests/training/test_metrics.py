"""BLEU / ROUGE-L grouped by MR, checked against sacrebleu and a hand-computed LCS."""

from __future__ import annotations

import math

import numpy as np
import sacrebleu

from skipdecode.training.e2e import group_by_mr, read_e2e_csv
from skipdecode.training.metrics import (
    bleu_from_statistics,
    bleu_statistics,
    bootstrap_interval,
    rouge_l_per_mr,
    score_corpus,
)

HYPOTHESES = [
    "Alpha serves Thai food.",  # identical to one reference of its MR
    "Beta is near the river.",
    "Gamma is a cheap restaurant.",
]


def _grouped(e2e_csv):
    groups = group_by_mr(read_e2e_csv(e2e_csv))
    return list(groups), list(groups.values())


def test_references_are_grouped_by_mr(e2e_csv):
    mrs, references = _grouped(e2e_csv)
    assert mrs == ["name[Alpha], food[Thai]", "name[Beta], area[riverside]", mrs[2]]
    assert [len(refs) for refs in references] == [2, 1, 3]


def test_bleu_is_sacrebleu_multi_reference_corpus_bleu(e2e_csv):
    _, references = _grouped(e2e_csv)
    # sacrebleu's own input: reference streams, None where an MR has fewer references.
    streams = [
        ["Alpha serves Thai food.", "Beta is by the riverside.", "Gamma is cheap."],
        ["Thai food is served at Alpha.", None, "Gamma is a cheap place to eat."],
        [None, None, "You can eat cheaply at Gamma."],
    ]
    expected = sacrebleu.corpus_bleu(HYPOTHESES, streams).score
    scores = score_corpus(HYPOTHESES, references, num_resamples=0)
    assert math.isclose(scores.bleu, expected, abs_tol=1e-9)
    assert 0 < scores.bleu < 100
    # Scoring rows one by one would be a different (wrong) number.
    per_row = sacrebleu.corpus_bleu(HYPOTHESES, [[refs[0] for refs in references]]).score
    assert not math.isclose(scores.bleu, per_row)
    stats = bleu_statistics(HYPOTHESES, references)
    assert math.isclose(bleu_from_statistics(stats[:1]), 100.0)  # hypothesis = a reference


def _lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = (
                table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
            )
    return table[-1][-1]


def _f(hyp: str, ref: str) -> float:
    words = lambda s: s.lower().replace(".", " ").split()  # noqa: E731 (rouge-score's tokens)
    h, r = words(hyp), words(ref)
    lcs = _lcs(h, r)
    return 0.0 if lcs == 0 else 2 * lcs / (len(h) + len(r))  # F of P = lcs/|h|, R = lcs/|r|


def test_rouge_l_takes_the_best_reference_per_mr(e2e_csv):
    _, references = _grouped(e2e_csv)
    per_mr = rouge_l_per_mr(HYPOTHESES, references)
    expected = [100 * max(_f(h, r) for r in refs) for h, refs in zip(HYPOTHESES, references)]
    np.testing.assert_allclose(per_mr, expected)
    # By hand: "beta is near the river" vs "beta is by the riverside": LCS 3 of 5 and 5 words.
    assert math.isclose(per_mr[1], 60.0)
    # "gamma is a cheap restaurant": best is "gamma is cheap" (LCS 3; P 3/5, R 3/3 -> F 0.75).
    assert math.isclose(per_mr[2], 75.0)
    scores = score_corpus(HYPOTHESES, references, num_resamples=0)
    assert math.isclose(scores.rouge_l, (100 + 60 + 75) / 3)


def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = np.arange(50, dtype=float)

    def mean(indices):
        return float(values[indices].mean())

    first = bootstrap_interval(50, mean, 300, seed=3)
    assert first == bootstrap_interval(50, mean, 300, seed=3)
    assert first != bootstrap_interval(50, mean, 300, seed=4)
    assert first[0] < values.mean() < first[1]
    assert first[1] - first[0] < 20  # far narrower than the data's range
    assert all(math.isnan(x) for x in bootstrap_interval(50, mean, 0))
