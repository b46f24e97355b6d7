"""The MR groups ``eval e2e`` scores apart, and the scores of one group.

- ``seen``: validation MRs whose restaurant name occurs in training MRs (all of them under the
  ``mr`` split);
- ``unseen``: validation MRs whose name no training MR has (the ``name`` split);
- ``fresh``: every validation MR again, its name and near values replaced by names invented for
  evaluation only (:func:`skipdecode.training.e2e_substitute.fresh_mrs`), references alike;
- ``all``: seen and unseen together (the real validation MRs; what the headline BLEU reports).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from skipdecode.training.e2e_split import validation_group
from skipdecode.training.e2e_substitute import fresh_mrs
from skipdecode.training.metrics import score_corpus
from skipdecode.training.ser import ser_corpus

GROUPS = ("all", "seen", "unseen", "fresh")


@dataclass(frozen=True)
class EvalSet:
    """The prompts of one evaluation: MRs, their references, and each MR's group."""

    mrs: list[str]
    references: list[list[str]]
    groups: list[str]  # "seen" | "unseen" | "fresh", one per MR

    def indices(self, group: str) -> list[int]:
        """Positions of ``group``'s MRs (``all``: seen and unseen)."""
        if group == "all":
            return [i for i, g in enumerate(self.groups) if g != "fresh"]
        return [i for i, g in enumerate(self.groups) if g == group]


def build_eval_set(groups: dict[str, list[str]], cfg, fresh: bool = True, seed: int = 0) -> EvalSet:
    """Seen/unseen labels for ``groups`` (MR -> references, from an EvalConfig's split), plus
    the fresh copies when ``fresh``."""
    mrs = list(groups)
    references = [groups[mr] for mr in mrs]
    labels = [
        validation_group(mr, cfg.split_by, cfg.val_percent, cfg.name_val_percent) or "seen"
        for mr in mrs
    ]
    if fresh:
        new_mrs, new_refs = fresh_mrs(mrs, references, seed)
        mrs, references = mrs + new_mrs, references + new_refs
        labels += ["fresh"] * len(new_mrs)
    return EvalSet(mrs, references, labels)


def score_group(
    eval_set: EvalSet, hypotheses: Sequence[str], group: str, num_resamples: int, seed: int
) -> dict[str, Any] | None:
    """BLEU, ROUGE-L, SER and the name-copy rate of one group with 95% intervals (None: empty)."""
    picked = eval_set.indices(group)
    if not picked:
        return None
    texts = [hypotheses[i] for i in picked]
    scores = score_corpus(texts, [eval_set.references[i] for i in picked], num_resamples, seed)
    slots = ser_corpus([eval_set.mrs[i] for i in picked], texts, num_resamples, seed)
    return {
        "num_mrs": len(picked),
        "bleu": scores.bleu,
        "bleu_ci": list(scores.bleu_ci),
        "rouge_l": scores.rouge_l,
        "rouge_l_ci": list(scores.rouge_l_ci),
        "ser": slots["ser"],
        "ser_ci": list(slots["ser_ci"]),
        "name_copied": slots["name_copied"],
        "name_copied_ci": list(slots["name_copied_ci"]),
    }
