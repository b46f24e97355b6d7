"""The E2E split by MR, the prompt format and the shifted labels of a batch."""

from __future__ import annotations

import hashlib
import random

import pytest

from skipdecode.training.batch import IGNORE_INDEX, collate
from skipdecode.training.e2e import (
    SYSTEM_PROMPT,
    encode_rows,
    is_validation,
    prompt_text,
    read_e2e_csv,
    split_by_mr,
)


@pytest.fixture(scope="module")
def devset(tmp_path_factory):
    """An E2E-shaped CSV built here (400 MRs, 1-5 references each), so CI needs no data files."""
    rng = random.Random(7)
    names = ["Aromi", "The Eagle", "Zizzi", "Cotto", "Giraffe", "Bibimbap House", "Strada"]
    foods = ["Chinese", "English", "French", "Indian", "Italian", "Japanese", "Fast food"]
    lines = ["mr,ref"]
    for i in range(400):
        mr = f"name[{rng.choice(names)} {i}], food[{rng.choice(foods)}], priceRange[{i % 7}]"
        for j in range(rng.randint(1, 5)):
            lines.append(f'"{mr}","Reference {j} for restaurant {i}, which serves food."')
    path = tmp_path_factory.mktemp("e2e") / "devset.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return read_e2e_csv(path)


def test_split_never_puts_an_mr_on_both_sides(devset):
    train, val = split_by_mr(devset, 15)
    train_mrs, val_mrs = {r.mr for r in train}, {r.mr for r in val}
    assert not train_mrs & val_mrs
    assert len(train) + len(val) == len(devset)
    all_mrs = train_mrs | val_mrs
    assert 0.10 < len(val_mrs) / len(all_mrs) < 0.20  # ~15% of the MRs


def test_split_rule_is_stable(devset):
    # The rule, recomputed here: md5 of the MR string, modulo 100, below val_percent.
    for row in devset[:200]:
        bucket = int(hashlib.md5(row.mr.encode("utf-8")).hexdigest(), 16) % 100
        assert is_validation(row.mr, 15) == (bucket < 15)
    shuffled = list(devset)
    random.Random(0).shuffle(shuffled)
    assert {r.mr for r in split_by_mr(shuffled, 15)[1]} == {r.mr for r in split_by_mr(devset)[1]}


def test_csv_needs_mr_and_ref(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("meaning,text\na,b\n")
    with pytest.raises(ValueError, match="needs columns mr and ref"):
        read_e2e_csv(path)


def test_prompt_and_target_format(smollm_tokenizer, e2e_csv):
    rows = read_e2e_csv(e2e_csv)
    examples = encode_rows(smollm_tokenizer, rows)
    text = prompt_text(smollm_tokenizer, rows[0].mr)
    assert SYSTEM_PROMPT in text and rows[0].mr in text
    assert text.endswith("<|im_start|>assistant\n")
    assert smollm_tokenizer.decode(examples[0].prompt_ids) == text
    assert examples[0].target_ids[-1] == smollm_tokenizer.eos_token_id
    assert smollm_tokenizer.decode(examples[0].target_ids[:-1]) == rows[0].ref


def test_labels_sit_on_the_row_that_predicts_them(smollm_tokenizer, e2e_csv):
    examples = encode_rows(smollm_tokenizer, read_e2e_csv(e2e_csv))[:3]
    batch = collate(examples, pad_id=smollm_tokenizer.eos_token_id)
    for row, ex in enumerate(examples):
        tokens = ex.prompt_ids + ex.target_ids
        labels = batch.labels[row].tolist()
        predicted = [(p, label) for p, label in enumerate(labels) if label != IGNORE_INDEX]
        assert [p for p, _ in predicted] == list(range(len(ex.prompt_ids) - 1, len(tokens) - 1))
        assert [label for _, label in predicted] == ex.target_ids
        assert batch.attention_mask[row].sum() == len(tokens)
    assert batch.num_target_tokens == sum(len(ex.target_ids) for ex in examples)
