"""The copy probe: prompts whose answer is a span of the prompt that no model can have memorized.

SkipDecode bypasses lower-middle layers for later tokens, and a model may lose the ability to copy
spans it has only seen in its prompt. Every item asks for one invented span back (answer: the span
alone), in five kinds, cycled evenly in this order:

- ``name``: an invented two-word name from random syllables ("Velkor Amtrisse");
- ``number``: a 6-10 digit integer or a decimal such as 4821.07;
- ``identifier``: a snake_case or CamelCase code identifier ("fetch_quorvel_index3");
- ``quote``: 6-10 words drawn at random from a fixed list, repeated verbatim;
- ``extract``: a 2-3 sentence passage naming one invented person in a role; the span is the name.

Items come from one ``random.Random(seed)`` consumed item by item, so a seed always gives the same
items and ``make_probe(n, seed)`` is a prefix of ``make_probe(m, seed)`` for ``n <= m``.

Scoring (:func:`span_found`): an answer is right when the span occurs in the output verbatim
(case-sensitive, every character including spaces and punctuation) and is not glued to a longer
word: the characters just before and after it, if any, are not letters, digits or underscores.
So surrounding whitespace, quotes, backticks, bold markers, a final period or a short lead-in
("The name is ...") are accepted, while a changed character, a changed case or a longer number
or identifier that merely contains the span ("4821390" for "482139") are not.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from skipdecode.training.metrics import bootstrap_interval

SCORING_RULE = (
    "right when the span occurs verbatim in the answer (case-sensitive) and is not part of a"
    " longer word, number or identifier; quotes, backticks, bold and extra words around it are"
    " accepted"
)
KINDS = ("name", "number", "identifier", "quote", "extract")

SYLLABLES = (
    "vel", "kor", "am", "tris", "zen", "trik", "quor", "mab", "dro", "lin", "fesh", "yor",
    "nuv", "keth", "ob", "rin", "sal", "ven", "tho", "gra", "mir", "pesk", "ul", "dax",
    "bre", "os", "wyn", "cal", "ith", "zor", "eb", "nal", "ka", "sef", "ru", "plon",
)  # fmt: skip
WORDS = (
    "copper", "lantern", "drift", "beside", "quiet", "orchard", "seven", "blue", "river", "stone",
    "carry", "under", "window", "winter", "bright", "paper", "listen", "garden", "slowly", "north",
    "bread", "thunder", "after", "silver", "table", "hollow", "green", "market", "mirror", "fold",
    "candle", "between", "narrow", "morning", "salt", "basket", "across", "yellow", "harbor", "tin",
)  # fmt: skip
VERBS = ("fetch", "load", "parse", "build", "merge", "scan", "flush", "resolve")
NOUNS = ("index", "buffer", "pool", "table", "cache", "queue", "record", "handle")
ROLES = (
    ("captain", "ship"),
    ("baker", "bakery"),
    ("librarian", "library"),
    ("engineer", "bridge crew"),
    ("gardener", "estate"),
    ("pilot", "night flight"),
)
FILLER = (
    "The weather that week was mild and dry.",
    "Most of the town was asleep by nine.",
    "Nobody remembered exactly when the old clock had stopped.",
    "A light rain fell on the second afternoon.",
    "The road to the coast was closed for repairs.",
)


@dataclass(frozen=True)
class ProbeItem:
    """One probe question: its kind (one of KINDS), the user prompt and the span to copy."""

    kind: str
    prompt: str
    span: str


def make_probe(num_items: int, seed: int = 0) -> list[ProbeItem]:
    """``num_items`` items, kinds cycled in KINDS order, all drawn from ``random.Random(seed)``."""
    if num_items < 1:
        raise ValueError(f"num_items must be >= 1 (got {num_items})")
    rng = random.Random(seed)
    makers = {
        "name": _name_item,
        "number": _number_item,
        "identifier": _identifier_item,
        "quote": _quote_item,
        "extract": _extract_item,
    }
    return [makers[KINDS[i % len(KINDS)]](rng) for i in range(num_items)]


def _word(rng: random.Random) -> str:
    """An invented lower-case word of 2-3 syllables."""
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))


def _invented_name(rng: random.Random) -> str:
    return f"{_word(rng).capitalize()} {_word(rng).capitalize()}"


def _name_item(rng: random.Random) -> ProbeItem:
    name = _invented_name(rng)
    return ProbeItem("name", f"Repeat this name exactly: {name}\nAnswer with the name only.", name)


def _number_item(rng: random.Random) -> ProbeItem:
    if rng.random() < 0.5:
        digits = rng.randint(6, 10)
        number = str(rng.randint(10 ** (digits - 1), 10**digits - 1))  # no leading zero
    else:
        number = f"{rng.randint(100, 99999)}.{rng.randint(0, 99):02d}"
    prompt = f"Repeat this number exactly: {number}\nAnswer with the number only."
    return ProbeItem("number", prompt, number)


def _identifier_item(rng: random.Random) -> ProbeItem:
    word, noun = _word(rng), rng.choice(NOUNS)
    if rng.random() < 0.5:
        identifier = f"{rng.choice(VERBS)}_{word}_{noun}{rng.randint(0, 9)}"
    else:
        identifier = f"{word.capitalize()}{noun.capitalize()}{rng.choice(NOUNS).capitalize()}"
    prompt = f"Repeat this code identifier exactly: {identifier}\nAnswer with the identifier only."
    return ProbeItem("identifier", prompt, identifier)


def _quote_item(rng: random.Random) -> ProbeItem:
    sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 10))).capitalize()
    prompt = f'Repeat this sentence verbatim: "{sentence}"\nAnswer with the sentence only.'
    return ProbeItem("quote", prompt, sentence)


def _extract_item(rng: random.Random) -> ProbeItem:
    name = _invented_name(rng)
    role, place = rng.choice(ROLES)
    facts = [
        f"The {role} of the {place} was {name}.",
        f"{name} had been the {role} for {rng.randint(2, 30)} years.",
    ]
    sentences = [rng.choice(facts), *rng.sample(FILLER, rng.randint(1, 2))]
    rng.shuffle(sentences)
    passage = " ".join(sentences)
    prompt = f"{passage}\n\nWhat is the name of the {role} in this text? Answer with the name only."
    return ProbeItem("extract", prompt, name)


def span_found(span: str, text: str) -> bool:
    """Whether ``text`` holds ``span`` verbatim, not glued to a longer word (SCORING_RULE; the
    module docstring gives examples)."""
    pattern = rf"(?<!\w){re.escape(span)}(?!\w)"
    return re.search(pattern, text) is not None


def score(
    items: Sequence[ProbeItem],
    texts: Sequence[str],
    num_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Exact-span accuracy in percent with a 95% bootstrap interval over items, per-kind
    accuracies (kinds present, in KINDS order) and the per-item verdicts."""
    if len(items) != len(texts) or not items:
        raise ValueError(f"need one text per item and at least one item ({len(items)} items)")
    is_correct = [span_found(item.span, text) for item, text in zip(items, texts)]
    hits = np.asarray(is_correct, dtype=np.float64)
    kinds = np.asarray([item.kind for item in items])
    low, high = bootstrap_interval(
        len(items), lambda i: 100.0 * float(hits[i].mean()), num_resamples, seed
    )
    return {
        "accuracy": 100.0 * float(hits.mean()),
        "accuracy_ci": [low, high],
        "per_kind": {k: 100.0 * float(hits[kinds == k].mean()) for k in KINDS if k in kinds},
        "num_items": len(items),
        "is_correct": is_correct,
    }
