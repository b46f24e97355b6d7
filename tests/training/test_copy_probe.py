"""The copy probe's generator and scorer (no model)."""

from __future__ import annotations

import pytest

from skipdecode.training.copy_probe import KINDS, ProbeItem, make_probe, score, span_found


def test_the_same_seed_gives_the_same_items_and_another_seed_others():
    assert make_probe(20, seed=3) == make_probe(20, seed=3)
    assert make_probe(20, seed=3) != make_probe(20, seed=4)
    assert make_probe(7, seed=3) == make_probe(20, seed=3)[:7]  # ablation items are a prefix


def test_kinds_cycle_evenly_and_every_span_is_in_its_prompt():
    items = make_probe(50, seed=0)
    assert [item.kind for item in items[:5]] == list(KINDS)
    assert all(sum(item.kind == kind for item in items) == 10 for kind in KINDS)
    for item in items:
        assert item.span and item.span in item.prompt
        assert span_found(item.span, item.prompt)
        assert "only." in item.prompt  # the answer is the span alone
    assert len({item.span for item in items}) == len(items)


def test_span_shapes():
    items = make_probe(25, seed=1)
    for item in items:
        if item.kind == "number":
            assert item.span.replace(".", "", 1).isdigit() and item.span[0] != "0"
        elif item.kind == "quote":
            assert 6 <= len(item.span.split()) <= 10
        elif item.kind in ("name", "extract"):
            assert len(item.span.split()) == 2 and item.span.istitle()
        else:
            assert item.span.isidentifier()


def test_make_probe_rejects_no_items():
    with pytest.raises(ValueError, match="num_items"):
        make_probe(0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Velkor Amtrisse", True),
        ("  Velkor Amtrisse\n", True),
        ('"Velkor Amtrisse"', True),
        ("`Velkor Amtrisse`", True),
        ("**Velkor Amtrisse**", True),
        ("The name is Velkor Amtrisse.", True),
        ("Velkor Amtrise", False),  # one character dropped
        ("Velkor Amtrissa", False),  # one character changed
        ("velkor amtrisse", False),  # case matters
        ("Velkor  Amtrisse", False),  # spacing matters
        ("Velkor Amtrisses", False),  # part of a longer word
        ("", False),
    ],
)
def test_span_found(text, expected):
    assert span_found("Velkor Amtrisse", text) is expected


def test_a_number_inside_a_longer_number_is_not_a_copy():
    assert span_found("4821.07", "The number is 4821.07.")
    assert not span_found("4821.07", "4821.075")
    assert not span_found("482139", "1482139")
    assert span_found("fetch_quorvel_index3", "`fetch_quorvel_index3()`")
    assert not span_found("fetch_quorvel_index3", "fetch_quorvel_index34")


def test_score_on_hand_made_items():
    items = [
        ProbeItem("name", "p", "Velkor Amtrisse"),
        ProbeItem("number", "p", "4821.07"),
        ProbeItem("name", "p", "Zenmab Drolin"),
        ProbeItem("quote", "p", "Copper lantern drift"),
    ]
    texts = ["Velkor Amtrisse", "4821.07", "Zenmab Drolim", "'Copper lantern drift'"]
    result = score(items, texts, num_resamples=200, seed=0)
    assert result["accuracy"] == 75.0
    assert result["per_kind"] == {"name": 50.0, "number": 100.0, "quote": 100.0}
    assert result["is_correct"] == [True, True, False, True]
    low, high = result["accuracy_ci"]
    assert 0.0 <= low <= 75.0 <= high <= 100.0 and low < high
    assert score(items, texts, num_resamples=200, seed=0) == result  # seeded bootstrap


def test_score_needs_one_text_per_item():
    with pytest.raises(ValueError, match="one text per item"):
        score([ProbeItem("name", "p", "A B")], [])
