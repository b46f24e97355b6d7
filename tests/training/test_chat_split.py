"""The split by conversation (the documented md5 rule, ShareGPT chunks together) and the chat
prompts built from each side."""

from __future__ import annotations

import hashlib
import json
import random
import string
from types import SimpleNamespace

import pytest

from skipdecode.datasets import (
    Conversation,
    first_chunks,
    is_first_chunk,
    read_chat_jsonl,
    read_sharegpt,
    split_conversations,
    split_of,
)
from skipdecode.training import chat


def _bucket(text: str) -> int:
    return int(hashlib.md5(text.encode("utf-8")).hexdigest(), 16) % 100


def _expected_side(group: str, val_percent: int, test_percent: int) -> str:
    bucket = _bucket(group)
    if bucket < test_percent:
        return "test"
    return "val" if bucket < test_percent + val_percent else "train"


def test_split_of_follows_the_documented_md5_rule():
    ids = ["QWJhYvA", "abc", "chats:17", "conversation 42", "ünïcode", "x"]
    for conv_id in ids:
        for val_percent, test_percent in ((2, 4), (10, 20), (50, 50), (0, 0), (0, 100)):
            expected = _expected_side(conv_id, val_percent, test_percent)
            assert split_of(conv_id, val_percent, test_percent) == expected, conv_id
    assert split_of("abc", 0, 0) == "train"
    assert split_of("abc", 0, 100) == "test"
    assert split_of("abc", 100, 0) == "val"


def test_chunks_of_one_sharegpt_chat_share_its_side(tmp_path):
    records = [
        {"id": i, "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
        for i in ("abc", "abc_0", "abc_1", "abc_12", "abc_x", "a_1_2")
    ]
    path = tmp_path / "chunks.json"
    path.write_text(json.dumps(records))
    conversations, _ = read_sharegpt(path)
    keys = {c.id: c.split_key for c in conversations}
    assert keys == {
        "abc": "abc", "abc_0": "abc", "abc_1": "abc", "abc_12": "abc",
        "abc_x": "abc_x",  # only a trailing "_<digits>" is a chunk suffix
        "a_1_2": "a_1",
    }  # fmt: skip
    assert [c.chunk for c in conversations] == [0, 0, 1, 12, 0, 2]
    for val_percent, test_percent in ((2, 4), (30, 30), (0, 50)):
        sides = split_conversations(conversations, val_percent, test_percent)
        side_of = {c.id: side for side, members in sides.items() for c in members}
        abc = _expected_side("abc", val_percent, test_percent)
        assert {side_of[i] for i in ("abc", "abc_0", "abc_1", "abc_12")} == {abc}


def test_jsonl_ids_are_split_as_they_are(tmp_path):
    path = tmp_path / "chats.jsonl"
    lines = [
        {"id": f"sample_{i}", "messages": [{"role": "user", "content": "q"},
                                           {"role": "assistant", "content": "a"}]}
        for i in range(400)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    conversations, _ = read_chat_jsonl(path)
    assert len(first_chunks(conversations)) == 400  # no ShareGPT chunk rule for JSONL ids
    sides = split_conversations(conversations, 10, 20)
    for side, members in sides.items():
        assert all(_expected_side(c.id, 10, 20) == side for c in members)
    assert len(sides["train"]) < 400  # not every "sample_N" hashed as one group


def _random_id(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits, k=7))


def test_split_conversations_keeps_groups_together_with_stable_sizes():
    rng = random.Random(3)
    groups = [_random_id(rng) for _ in range(1000)]
    ids = []
    for group in groups:  # 1 to 3 chunks per chat: ~2,000 ids
        ids += [f"{group}_{k}" for k in range(rng.randint(1, 3))]
    conversations = [
        Conversation(i, (), i.rsplit("_", 1)[0], int(i.rsplit("_", 1)[1])) for i in ids
    ]
    sides = split_conversations(conversations, val_percent=10, test_percent=20)
    assert set(sides) == {"train", "val", "test"}
    assert sorted(c.id for side in sides.values() for c in side) == sorted(ids)
    group_sides: dict[str, set[str]] = {}
    for side, members in sides.items():
        for c in members:
            group_sides.setdefault(c.id.rsplit("_", 1)[0], set()).add(side)
    assert all(len(s) == 1 for s in group_sides.values())  # no chat on two sides
    for group, (side,) in group_sides.items():
        assert side == _expected_side(group, 10, 20)
    # shares of chats near 70/10/20 % (1,000 chats: one standard deviation is ~1.3 points)
    share = {s: sum(v == {s} for v in group_sides.values()) / len(groups) for s in sides}
    assert share["train"] == pytest.approx(0.70, abs=0.05)
    assert share["val"] == pytest.approx(0.10, abs=0.04)
    assert share["test"] == pytest.approx(0.20, abs=0.04)
    # the same sides again, and for the conversations in another order
    again = split_conversations(conversations, 10, 20)
    assert {k: [c.id for c in v] for k, v in again.items()} == {
        k: [c.id for c in v] for k, v in sides.items()
    }
    shuffled = conversations[:]
    random.Random(4).shuffle(shuffled)
    reordered = split_conversations(shuffled, 10, 20)
    for side in sides:
        assert {c.id for c in reordered[side]} == {c.id for c in sides[side]}
        # input order is kept within a side
        order = {c.id: n for n, c in enumerate(shuffled)}
        assert [order[c.id] for c in reordered[side]] == sorted(
            order[c.id] for c in reordered[side]
        )


def test_split_sizes_on_distinct_ids():
    ids = [f"conversation-{n}" for n in range(2000)]
    sides = split_conversations([Conversation(i, ()) for i in ids], val_percent=2, test_percent=4)
    expected = {"train": 0, "val": 0, "test": 0}
    for conv_id in ids:
        expected[_expected_side(conv_id, 2, 4)] += 1
    assert {k: len(v) for k, v in sides.items()} == expected
    assert len(sides["test"]) == pytest.approx(80, abs=30)  # 4 % of 2,000
    assert len(sides["val"]) == pytest.approx(40, abs=20)  # 2 %


@pytest.mark.parametrize(("val_percent", "test_percent"), [(-1, 4), (2, -1), (60, 41), (101, 0)])
def test_bad_percentages_are_rejected(val_percent, test_percent):
    with pytest.raises(ValueError, match="val_percent"):
        split_of("abc", val_percent, test_percent)
    with pytest.raises(ValueError, match="val_percent"):
        split_conversations([Conversation("abc", ())], val_percent, test_percent)


def test_is_first_chunk():
    for conv_id in ("abc", "abc_0", "chats:3", "abc_x", "a_1_0"):
        assert is_first_chunk(conv_id), conv_id
    for conv_id in ("abc_1", "abc_12", "a_0_3"):
        assert not is_first_chunk(conv_id), conv_id


# --- chat prompts (training/chat.py) --------------------------------------------------------------


class WordTokenizer:
    """A tokenizer of whitespace-separated words: ids given in first-seen order from 10 on; BOS 0
    only with add_special_tokens=True; the chat template writes one "role: content" line per
    message and "assistant:" as the generation prompt."""

    bos_token_id = 0
    eos_token_id = 1
    chat_template = "{role}: {content} lines"

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def ids(self, text: str) -> list[int]:
        return [self.vocab.setdefault(word, 10 + len(self.vocab)) for word in text.split()]

    def apply_chat_template(
        self, messages, add_generation_prompt=False, tokenize=True, chat_template=None
    ) -> str:
        assert tokenize is False
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return "\n".join(lines + (["assistant:"] if add_generation_prompt else []))

    def __call__(self, text: str, add_special_tokens: bool = True) -> SimpleNamespace:
        ids = self.ids(text)
        return SimpleNamespace(input_ids=[self.bos_token_id] + ids if add_special_tokens else ids)


def _conversation(conv_id: str, *pairs: tuple[str, str]) -> Conversation:
    return Conversation(conv_id, tuple({"role": r, "content": c} for r, c in pairs))


def test_first_turn_keeps_a_leading_system_message():
    conversation = _conversation(
        "c",
        ("system", "Be brief."),
        ("user", "Hi"),
        ("assistant", "Hello"),
        ("user", "More"),
        ("assistant", "No"),
    )
    messages, answer = chat.first_turn(conversation)
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert answer == "Hello"


def test_first_turn_is_the_first_answered_nonblank_user_turn():
    conversation = _conversation(
        "c",
        ("assistant", "Welcome"),
        ("user", "  "),
        ("assistant", "Pardon?"),
        ("user", "Why?"),
        ("user", "Really, why?"),
        ("assistant", "Because."),
    )
    messages, answer = chat.first_turn(conversation)
    assert [m["content"] for m in messages] == ["Welcome", "  ", "Pardon?", "Why?", "Really, why?"]
    assert answer == "Because."
    with pytest.raises(ValueError, match="'q'"):
        chat.first_turn(_conversation("q", ("user", "Anyone?"), ("user", "Hello?")))


def test_prompt_ids_render_the_template_and_add_no_special_tokens():
    tokenizer = WordTokenizer()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    ids = chat.prompt_ids(tokenizer, messages)
    assert ids == tokenizer.ids("system: Be brief.\nuser: Hi there\nassistant:")
    assert len(ids) == 7 and tokenizer.bos_token_id not in ids


def test_answer_ids_append_eos_only_when_the_answer_fits():
    tokenizer = WordTokenizer()
    x, y, z = tokenizer.ids("x y z")
    eos = tokenizer.eos_token_id
    assert chat.answer_ids(tokenizer, "x y z", max_answer_tokens=5) == [x, y, z, eos]
    assert chat.answer_ids(tokenizer, "x y z", max_answer_tokens=4) == [x, y, z, eos]
    assert chat.answer_ids(tokenizer, "x y z", max_answer_tokens=3) == [x, y, z]  # no room
    assert chat.answer_ids(tokenizer, "x y z", max_answer_tokens=2) == [x, y]


def _qa(conv_id: str, question: str, answer: str = "yes") -> Conversation:
    return _conversation(conv_id, ("user", question), ("assistant", answer))


def test_build_prompts_leaves_out_long_prompts_and_counts_them():
    tokenizer = WordTokenizer()
    conversations = [
        _qa("short", "a b"),  # "user: a b assistant:" = 4 tokens
        _qa("long", "a b c d e f g"),  # 9 tokens
        _qa("exact", "a b c d e f"),  # 8 tokens: fits exactly
        _qa("blank-answer", "a", "  "),
        _conversation("sys", ("system", "s"), ("user", "a"), ("assistant", "ok")),  # 5 tokens
    ]
    prompts, num_left_out = chat.build_prompts(
        tokenizer, conversations, max_prompt_tokens=8, max_answer_tokens=4
    )
    assert [p.id for p in prompts] == ["short", "exact", "sys"]
    assert num_left_out == 2  # "long" (too many tokens) and "blank-answer"
    short = prompts[0]
    assert short.prompt_ids == tokenizer.ids("user: a b\nassistant:")
    assert short.reference_ids == tokenizer.ids("yes") + [tokenizer.eos_token_id]
    assert short.messages == ({"role": "user", "content": "a b"},)
    assert len(prompts[1].prompt_ids) == 8
    assert prompts[2].messages[0] == {"role": "system", "content": "s"}


def test_build_prompts_honours_limit_and_max_model_len():
    tokenizer = WordTokenizer()
    conversations = [_qa(f"q{n}", " ".join(["w"] * n), "one two three") for n in range(1, 7)]
    # prompt of q{n}: "user:" + n words + "assistant:" = n + 2 tokens
    prompts, num_left_out = chat.build_prompts(tokenizer, conversations, limit=2)
    assert [p.id for p in prompts] == ["q1", "q2"] and num_left_out == 0
    # max_model_len 9 with 3 answer tokens leaves 6 for the prompt: q1..q4 fit
    prompts, num_left_out = chat.build_prompts(
        tokenizer, conversations, max_prompt_tokens=256, max_answer_tokens=3, max_model_len=9
    )
    assert [p.id for p in prompts] == ["q1", "q2", "q3", "q4"] and num_left_out == 2
    assert all(len(p.reference_ids) == 3 for p in prompts)  # cut at 3 tokens: no EOS
    # the smaller of max_prompt_tokens and max_model_len - max_answer_tokens wins
    prompts, _ = chat.build_prompts(
        tokenizer, conversations, max_prompt_tokens=4, max_answer_tokens=3, max_model_len=100
    )
    assert [p.id for p in prompts] == ["q1", "q2"]
    # the limit counts kept prompts: left-out ones do not use it up
    prompts, num_left_out = chat.build_prompts(
        tokenizer, conversations[::-1], max_prompt_tokens=4, limit=1
    )
    assert [p.id for p in prompts] == ["q2"] and num_left_out == 4


@pytest.mark.parametrize(("prompt", "answer"), [(0, 128), (256, 0)])
def test_build_prompts_rejects_empty_budgets(prompt, answer):
    with pytest.raises(ValueError, match=">= 1"):
        chat.build_prompts(WordTokenizer(), [_qa("a", "b")], prompt, answer)
