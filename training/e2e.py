"""E2E NLG data (``mr,ref`` CSV): the split by MR, the prompt format, training examples.

Prompt format (one, used by training and evaluation alike): the model's chat template with the
system message :data:`SYSTEM_PROMPT`, the MR verbatim as the user message, and the generation
prompt; the target is the reference sentence followed by EOS. Without a chat template the prompt
is ``SYSTEM_PROMPT + "\\n" + mr + "\\n"``. The prompt is tokenized exactly as the engine tokenizes
a prompt string (``add_special_tokens=True``), so evaluation can pass the same ids.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from skipdecode.training.batch import Example

# The official E2E development set, shipped as package data (e2e_data/README.md: source, licence).
E2E_DATA_DIR = Path(__file__).resolve().parent / "e2e_data"
DEFAULT_E2E_CSV = str(E2E_DATA_DIR / "devset.csv")
DEFAULT_VAL_PERCENT = 15
DEFAULT_DECAY_TOKENS = 24  # references average ~28 tokens (+EOS): presets land near target
SYSTEM_PROMPT = "Describe the restaurant in one sentence."  # short: prompts are most tokens
PROMPT_FORMAT = (
    "chat template; system: SYSTEM_PROMPT; user: the MR verbatim; generation prompt."
    " Target: the reference sentence + EOS."
)
SPLIT_RULE = "int(hashlib.md5(mr.encode('utf-8')).hexdigest(), 16) % 100 < val_percent -> val"


@dataclass(frozen=True)
class E2ERow:
    """One CSV row: a meaning representation and one human reference for it."""

    mr: str
    ref: str


def read_e2e_csv(path: str | os.PathLike, max_rows: int | None = None) -> list[E2ERow]:
    """Rows of a CSV with (at least) the columns ``mr`` and ``ref``; extra columns are ignored."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if "mr" not in columns or "ref" not in columns:
            raise ValueError(f"{path}: needs columns mr and ref (has {', '.join(columns)})")
        rows = [E2ERow(r["mr"].strip(), r["ref"].strip()) for r in reader]
    rows = [r for r in rows if r.mr and r.ref]
    if not rows:
        raise ValueError(f"{path}: no rows with both mr and ref")
    return rows[:max_rows] if max_rows is not None else rows


def is_validation(mr: str, val_percent: int = DEFAULT_VAL_PERCENT) -> bool:
    """The split rule (:data:`SPLIT_RULE`): a stable hash of the MR string, never of the row."""
    return int(hashlib.md5(mr.encode("utf-8")).hexdigest(), 16) % 100 < val_percent


def split_by_mr(
    rows: Iterable[E2ERow], val_percent: int = DEFAULT_VAL_PERCENT
) -> tuple[list[E2ERow], list[E2ERow]]:
    """(train, validation); every row of an MR lands on the same side."""
    if not 0 <= val_percent <= 100:
        raise ValueError(f"val_percent must be in [0, 100] (got {val_percent})")
    train: list[E2ERow] = []
    val: list[E2ERow] = []
    for row in rows:
        (val if is_validation(row.mr, val_percent) else train).append(row)
    return train, val


def group_by_mr(rows: Iterable[E2ERow]) -> dict[str, list[str]]:
    """MR -> its references, MRs in first-seen order (several rows of an MR = several refs)."""
    groups: dict[str, list[str]] = {}
    for row in rows:
        groups.setdefault(row.mr, []).append(row.ref)
    return groups


def prompt_text(tokenizer, mr: str) -> str:
    """The prompt string for one MR (see the module docstring)."""
    if getattr(tokenizer, "chat_template", None):
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": mr},
        ]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return f"{SYSTEM_PROMPT}\n{mr}\n"


def prompt_ids(tokenizer, mr: str) -> list[int]:
    """Token ids of the prompt, tokenized the way the engine tokenizes prompt strings."""
    return list(tokenizer(prompt_text(tokenizer, mr), add_special_tokens=True).input_ids)


def target_ids(tokenizer, ref: str) -> list[int]:
    """The reference's token ids followed by EOS."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: targets must end in one")
    return list(tokenizer(ref, add_special_tokens=False).input_ids) + [tokenizer.eos_token_id]


def encode_rows(tokenizer, rows: Sequence[E2ERow]) -> list[Example]:
    """Training examples; each MR's prompt is tokenized once."""
    prompts: dict[str, list[int]] = {}
    examples = []
    for row in rows:
        if row.mr not in prompts:
            prompts[row.mr] = prompt_ids(tokenizer, row.mr)
        examples.append(Example(prompts[row.mr], target_ids(tokenizer, row.ref)))
    return examples


def data_record(path: str, val_percent: int) -> dict:
    """What a checkpoint records about its data (skip_schedule.json ``data``)."""
    return {
        "file": os.path.abspath(path),
        "split": "train",
        "split_rule": SPLIT_RULE,
        "val_percent": val_percent,
    }
