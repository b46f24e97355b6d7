"""Slot error rate (SER) of E2E NLG outputs: which MR values a generated text fails to realize.

In the spirit of the E2E challenge's slot-error scripts (Dušek et al.), each MR value is looked
up in the text by the regexes of ``_PATTERNS``, case-insensitively and as whole words:

- ``name``, ``near``, any other slot or value not in the tables: the value verbatim (a possessive
  ``'s`` may follow). ``eatType``: the value or its plural; ``coffee shop`` also ``coffee-shop``,
  ``coffeeshop``, ``café``. ``food``: the value or its country (``English`` also ``British``),
  ``Fast food`` also ``fast-food``.
- ``area``: ``city centre`` also ``city center``, ``city-centre``, ``town centre``, ``centre of
  (the) city/town``; ``riverside`` also ``river side``, ``river`` (``by the river``),
  ``riverfront``, ``riverbank``, ``waterfront``.
- ``familyFriendly[no]``: a negated form: ``not``/``non``/``no``/``n't``/``never``/``without``/
  ``unsuitable``, at most four words that do not end a clause (``and``, ``but``, ``is`` ...), a
  family word (``family``, ``families``, ``kid(s)``, ``child(ren)``); also ``children not
  allowed``, ``family unfriendly``, ``adults only``, ``for adults``. ``familyFriendly[yes]``: a
  family word and no negated form (``not family-friendly`` contradicts it: missing).
- ``priceRange`` numbers (digits or words): ``less than £20``: ``20``/``£20`` not starting a
  range; ``£20-25``: ``20-25``, ``£20-£25``, ``20 to/and 25``; ``more than £30``: ``30``/``£30``
  at most two words after ``more``/``over``/``above``/``higher``/``from``/``at least``..., or
  followed by ``+``/``plus``/``or more``. Words: ``cheap`` also ``inexpensive``, ``affordable``,
  ``low price(d)``; ``moderate`` also ``moderately``, ``mid-range``, ``mid-priced``, ``average
  price(d)``; ``high`` also ``expensive``, ``high(ly) price(d)``, ``pricey``, ``costly``,
  ``prices ... high``.
- ``customer rating`` numbers: ``N out of 5``, ``N of 5``, ``N/5``, ``N star(s)``, ``rated N``,
  ``rating of N`` (N in digits or a word). Words: a level word at most two words before a rating
  word (``rat*``, ``review*``, ``score*``, ``star*``) or at most three after one; ``low``: low,
  poor(ly), bad(ly); ``average``: average(ly), mediocre, middling; ``high``: high(ly), well, top,
  excellent, great.
- A numeric value and its word value (``_SAME_MEANING``: ``less than £20``/``cheap``, ``£20-25``/
  ``moderate``, ``more than £30``/``high``, ``1``/``3``/``5 out of 5``/``low``/``average``/``high``)
  realize each other: human references say "cheap" for ``less than £20`` as often as not.

``slot_errors`` blanks out the MR's own ``name`` and ``near`` values before it checks the other
slots, so ``near[Raja Indian Cuisine]`` cannot realize ``food[Indian]``. SER here counts values
*missing* from the text (and, for ``familyFriendly``, contradicted); it does not count values the
text adds beyond the MR.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from skipdecode.training.e2e_split import parse_mr
from skipdecode.training.metrics import bootstrap_interval

_VERBATIM_SLOTS = ("name", "near")
_FAMILY = r"(?:famil(?:y|ies)|kids?|child(?:ren)?)"
# Words that end a negation's reach: "not expensive and kid friendly" is not a negated form.
_CLAUSE_BREAK = r"(?:and|but|or|yet|though|although|while|whereas|however|also|is|are|it|its|which)"
_NEGATED_FAMILY = (
    rf"(?:\bnot|\bnon|\bno|n't|\bnever|\bwithout|\bunsuitable)[\s-]+"
    rf"(?:(?!{_CLAUSE_BREAK}\b)[\w'’]+[\s-]+){{0,4}}?{_FAMILY}\b"
    rf"|\b{_FAMILY}[\s-]+(?:are\s+)?(?:not|never)\s+(?:allowed|welcome|permitted)"
    rf"|\b{_FAMILY}[\s-]*unfriendly|\badults?[\s-]+only|\b(?:only\s+)?for\s+adults\b"
)
_TWENTY = r"(?:20|twenty(?![\s-]?five))"
_THIRTY = r"(?:30(?!\d)|thirty\b)"
_RANGE_TO = r"(?:-|–|to|and)"
_MORE = r"(?:more|over|above|greater|higher|exceed\w*|upwards?|excess|starting|from|at least)"
_RATING_WORD = r"(?:rat|review|score|star)\w*"


def _rating_level(level: str) -> str:
    before = rf"\b{level}\W+(?:\w+\W+){{0,2}}?{_RATING_WORD}"
    return rf"{before}|\b{_RATING_WORD}\W+(?:\w+\W+){{0,3}}?{level}\b"


def _out_of_five(number: str) -> str:
    return (
        rf"\b{number}\s*(?:out\s+(?:of\s+)?|of|/)\s*(?:5|five)\b|\b{number}[\s-]*stars?\b"
        rf"|\brated\s+(?:a\s+)?{number}\b|\brating\s+of\s+{number}\b"
    )


# slot -> lower-cased value -> regex that realizes it (bounds written out in each regex).
_PATTERNS: dict[str, dict[str, str]] = {
    "eatType": {
        "coffee shop": r"\bcoffee[\s-]?shops?\b|\bcaf[eé]s?\b",
        "pub": r"\bpubs?\b",
        "restaurant": r"\brestaurants?\b",
    },
    "food": {
        "english": r"\b(?:english|british)\b",
        "chinese": r"\b(?:chinese|china)\b",
        "french": r"\b(?:french|france)\b",
        "indian": r"\bindian?\b",
        "italian": r"\b(?:italian|italy)\b",
        "japanese": r"\b(?:japanese|japan)\b",
        "fast food": r"\bfast[\s-]?food\b",
    },
    "area": {
        "city centre": r"\b(?:city|town)[\s-]?cent(?:re|er)\b"
        r"|\bcent(?:re|er)\s+of\s+(?:the\s+)?(?:city|town)\b",
        "riverside": r"\briver(?:side|front|bank|[\s-]side)?\b|\bwaterfront\b",
    },
    "familyFriendly": {"yes": rf"\b{_FAMILY}\b", "no": _NEGATED_FAMILY},
    "priceRange": {
        "less than £20": rf"(?<![\d-])£?\s?{_TWENTY}(?!\d|\s*{_RANGE_TO}\s*£?\s?(?:\d|twenty))",
        "£20-25": rf"(?<!\d)£?\s?{_TWENTY}\s*{_RANGE_TO}\s*£?\s?(?:25|twenty[\s-]?five)(?!\d)",
        "more than £30": rf"\b{_MORE}\W+(?:\w+\W+){{0,2}}?£?\s?{_THIRTY}"
        rf"|(?<!\d)£?\s?{_THIRTY}\s*(?:\+|plus\b|or\s+more\b)",
        "cheap": r"\bcheap\w*|\binexpensive\w*|\baffordabl\w*|\blow[\s-]+(?:price[sd]?|cost)\b",
        "moderate": r"\bmoderat\w*|\bmid[\s-]?(?:range\w*|price\w*|cost)\b|\baverage[\s-]+pric\w*",
        "high": r"\bexpensive\b|\bhigh(?:ly)?[\s-]+(?:pric|cost)\w*|\bpric(?:e)?y\b|\bcostly\b"
        r"|\bpric\w*\W+(?:\w+\W+){0,3}?high\b",
    },
    "customer rating": {
        "1 out of 5": _out_of_five("(?:1|one)"),
        "3 out of 5": _out_of_five("(?:3|three)"),
        "5 out of 5": _out_of_five("(?:5|five)"),
        "low": _rating_level(r"(?:low|lowly|poor|poorly|bad|badly)"),
        "average": _rating_level(r"(?:average|averagely|mediocre|middling)"),
        "high": _rating_level(r"(?:high|highly|well|top|excellent|great)"),
    },
}
# slot -> numeric value -> word value: either value is realized by the other's regex too.
_SAME_MEANING = {
    "priceRange": {"less than £20": "cheap", "£20-25": "moderate", "more than £30": "high"},
    "customer rating": {"1 out of 5": "low", "3 out of 5": "average", "5 out of 5": "high"},
}
# slot -> lower-cased value -> regex that contradicts the value even where its regex matches.
_CONTRADICTIONS = {("familyFriendly", "yes"): re.compile(_NEGATED_FAMILY, re.IGNORECASE)}


def _compile_realizations() -> dict[tuple[str, str], re.Pattern[str]]:
    patterns = {(slot, value): p for slot, table in _PATTERNS.items() for value, p in table.items()}
    for slot, pairs in _SAME_MEANING.items():
        for numeric, word in pairs.items():
            either = f"{patterns[slot, numeric]}|{patterns[slot, word]}"
            patterns[slot, numeric] = patterns[slot, word] = either
    return {key: re.compile(pattern, re.IGNORECASE) for key, pattern in patterns.items()}


_REALIZATIONS = _compile_realizations()


def _verbatim(value: str) -> re.Pattern[str]:
    # Lookarounds, not \b, so a value may start or end with a non-word character.
    return re.compile(rf"(?<!\w){re.escape(value)}(?!\w)", re.IGNORECASE)


def slot_realized(slot: str, value: str, text: str) -> bool:
    """Whether ``text`` realizes ``slot[value]`` by the rules of the module docstring."""
    key = (slot, value.strip().lower())
    realization = _REALIZATIONS.get(key) or _verbatim(value.strip())
    contradiction = _CONTRADICTIONS.get(key)
    is_contradicted = contradiction is not None and contradiction.search(text) is not None
    return realization.search(text) is not None and not is_contradicted


@dataclass(frozen=True)
class SlotErrors:
    """The slots of one MR that a text does not realize."""

    missing: tuple[str, ...]  # names of the unrealized slots, in MR order
    total: int  # number of slots in the MR


def slot_errors(mr: str, text: str) -> SlotErrors:
    """Check every slot of ``mr`` against ``text`` (name/near values blanked for the others)."""
    slots = parse_mr(mr)
    blanked = text
    for slot in _VERBATIM_SLOTS:
        if slot in slots:
            blanked = _verbatim(slots[slot]).sub(" ", blanked)
    missing = tuple(
        slot
        for slot, value in slots.items()
        if not slot_realized(slot, value, text if slot in _VERBATIM_SLOTS else blanked)
    )
    return SlotErrors(missing=missing, total=len(slots))


def name_copied(mr: str, text: str) -> bool | None:
    """Whether ``text`` contains the MR's name verbatim; None when the MR has no name."""
    name = parse_mr(mr).get("name")
    return None if name is None else slot_realized("name", name, text)


def ser_corpus(
    mrs: Sequence[str], texts: Sequence[str], num_resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Corpus SER (missing over total slots, percent) and the percent of named MRs whose name
    was copied, each with a 95% percentile bootstrap interval over MRs."""
    if len(mrs) != len(texts) or not mrs:
        raise ValueError("need one text per MR and at least one MR")
    errors = [slot_errors(mr, text) for mr, text in zip(mrs, texts)]
    num_missing = np.array([len(e.missing) for e in errors], dtype=float)
    num_slots = np.array([e.total for e in errors], dtype=float)
    copied = [name_copied(mr, text) for mr, text in zip(mrs, texts)]
    is_copied = np.array([c for c in copied if c is not None], dtype=float)

    def ser(indices: np.ndarray) -> float:
        return float(100 * num_missing[indices].sum() / num_slots[indices].sum())

    def copied_percent(indices: np.ndarray) -> float:
        return float(100 * is_copied[indices].mean())

    num_named = len(is_copied)
    return {
        "ser": ser(np.arange(len(errors))),
        "ser_ci": list(bootstrap_interval(len(errors), ser, num_resamples, seed)),
        "name_copied": copied_percent(np.arange(num_named)) if num_named else float("nan"),
        "name_copied_ci": list(bootstrap_interval(num_named, copied_percent, num_resamples, seed)),
        "num_mrs": len(errors),
    }
