"""Slot error rate: hand-checked MR/text pairs, and the dev-set references against their MRs."""

from __future__ import annotations

import math

import pytest

from skipdecode.training.e2e import DEFAULT_E2E_CSV, read_e2e_csv
from skipdecode.training.ser import SlotErrors, name_copied, ser_corpus, slot_errors, slot_realized

EAGLE = (
    "name[The Eagle], eatType[coffee shop], food[French], priceRange[moderate],"
    " customer rating[3 out of 5], area[riverside], familyFriendly[yes], near[Burger King]"
)


def test_five_slots_three_realized_names_the_two_missing():
    mr = "name[Cotto], eatType[pub], food[Italian], area[city centre], near[The Bakers]"
    text = "Cotto is a pub serving Italian food."
    assert slot_errors(mr, text) == SlotErrors(missing=("area", "near"), total=5)


def test_a_full_realization_misses_nothing():
    text = (
        "The Eagle's is a moderately priced French coffee-shop by the river near Burger King,"
        " rated 3 out of 5 and kid friendly."
    )
    assert slot_errors(EAGLE, text) == SlotErrors(missing=(), total=8)


def test_familyfriendly_yes_is_contradicted_by_a_negated_form():
    mr = "name[Aromi], familyFriendly[yes]"
    assert slot_errors(mr, "Aromi is family-friendly.").missing == ()
    assert slot_errors(mr, "Aromi is not family-friendly.").missing == ("familyFriendly",)
    assert slot_errors(mr, "Aromi is not cheap but it is family-friendly.").missing == ()


@pytest.mark.parametrize(
    "text",
    [
        "Aromi is not family-friendly.",
        "Aromi is not a family friendly place.",
        "Aromi isn't kid friendly.",
        "Aromi is non family-friendly.",
        "Aromi is not suitable for children.",
        "Aromi: adults only.",
        "At Aromi children are not allowed.",
    ],
)
def test_familyfriendly_no_needs_a_negated_form(text):
    assert slot_realized("familyFriendly", "no", text)
    assert not slot_realized("familyFriendly", "no", "Aromi is family-friendly.")


def test_name_may_be_possessive_but_not_part_of_another_word():
    assert slot_realized("name", "The Eagle", "The Eagle's menu is French.")
    assert not slot_realized("name", "The Eagle", "The Eagles serve French food.")
    assert not slot_realized("name", "The Eagle", "Eagle serves French food.")


def test_case_is_ignored():
    mr = "name[The Eagle], area[city centre], food[French]"
    assert slot_errors(mr, "THE EAGLE serves FRENCH food in the CITY CENTRE.").missing == ()


@pytest.mark.parametrize(
    ("slot", "value", "text", "expected"),
    [
        ("area", "city centre", "It is in the city center.", True),
        ("area", "city centre", "It is in the centre of the city.", True),
        ("area", "city centre", "It is by the river.", False),
        ("area", "riverside", "It is by the river.", True),
        ("eatType", "coffee shop", "A coffeeshop.", True),
        ("food", "Fast food", "It serves fast-food.", True),
        ("priceRange", "less than £20", "Meals cost under £20.", True),
        ("priceRange", "less than £20", "Meals cost £20-25.", False),
        ("priceRange", "less than £20", "It is cheap.", True),  # same meaning
        ("priceRange", "less than £20", "It is expensive.", False),
        ("priceRange", "£20-25", "Meals cost 20 to 25 pounds.", True),
        ("priceRange", "more than £30", "Meals cost over £30.", True),
        ("priceRange", "more than £30", "Meals cost £30.", False),
        ("priceRange", "high", "It is not cheap.", False),
        ("customer rating", "5 out of 5", "It has five stars.", True),
        ("customer rating", "5 out of 5", "It has three stars.", False),
        ("customer rating", "high", "A highly rated pub.", True),
        ("customer rating", "low", "A highly rated pub.", False),
        ("customer rating", "average", "Customers rate it average.", True),
        ("food", "Thai", "Thai food.", True),  # not in the tables: verbatim
        ("stars", "two", "Two of them.", True),  # unknown slot: verbatim
    ],
)
def test_rules(slot, value, text, expected):
    assert slot_realized(slot, value, text) is expected


def test_near_value_does_not_realize_food():
    mr = "name[The Wrestlers], food[Indian], near[Raja Indian Cuisine]"
    text = "The Wrestlers is near Raja Indian Cuisine."
    assert slot_errors(mr, text).missing == ("food",)


def test_name_copied():
    assert name_copied("name[Cotto], food[Italian]", "Cotto serves Italian food.") is True
    assert name_copied("name[Cotto], food[Italian]", "It serves Italian food.") is False
    assert name_copied("food[Italian], area[riverside]", "Italian food.") is None


def test_corpus_ser_and_name_copied_percent():
    mrs = [
        "name[Cotto], eatType[pub], food[Italian]",  # 3 slots, name missing
        # 4 slots, familyFriendly and priceRange missing
        "name[Aromi], area[riverside], familyFriendly[yes], priceRange[cheap]",
        "food[English], area[city centre]",  # 2 slots, none missing, no name
    ]
    texts = [
        "A pub serving Italian food.",
        "Aromi is by the river.",
        "English food in the city centre.",
    ]
    result = ser_corpus(mrs, texts, num_resamples=200)
    assert result["ser"] == pytest.approx(100 * 3 / 9)
    assert result["name_copied"] == pytest.approx(50.0)  # Aromi copied, Cotto not; MR 3 unnamed
    assert result["num_mrs"] == 3
    low, high = result["ser_ci"]
    assert 0 <= low <= result["ser"] <= high <= 100
    assert result["name_copied_ci"][0] <= 50.0 <= result["name_copied_ci"][1]


def test_corpus_without_names_has_no_name_copied_percent():
    result = ser_corpus(["food[English]"], ["English food."], num_resamples=10)
    assert result["ser"] == 0.0
    assert math.isnan(result["name_copied"])


@pytest.mark.parametrize(("mrs", "texts"), [([], []), (["name[Cotto]"], []), ([], ["Cotto"])])
def test_corpus_rejects_empty_or_mismatched_input(mrs, texts):
    with pytest.raises(ValueError):
        ser_corpus(mrs, texts)


def test_dev_set_references_realize_their_mrs():
    # Human references realize most values: rules too strict for their paraphrases land above
    # the upper bound, rules that match almost anything below the lower one.
    rows = read_e2e_csv(DEFAULT_E2E_CSV)
    result = ser_corpus([r.mr for r in rows], [r.ref for r in rows], num_resamples=0)
    assert result["num_mrs"] == 4672
    assert 5.0 < result["ser"] < 9.0
    assert result["name_copied"] > 99.0
