"""A tolerant reader of a JSON array: every complete element of a file that may be cut off.

The ShareGPT copy on PyPI ends mid-record. Decoding the array one element at a time
(``json.JSONDecoder.raw_decode``) keeps every complete element and stops at the cut one; any
other malformation is still an error that names the file and the character.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

# What a file cut inside a token leaves from the decoder's error position on: part of a literal
# (``tr``), of a number (``1.``, ``1e+``) or of a ``\uXXXX`` escape (``u00``; ``ud83d`` or
# ``ud83d\ude0``: a surrogate pair cut before its low half is complete).
_PARTIAL_TOKEN = re.compile(
    r"t|tr|tru|f|fa|fal|fals|n|nu|nul|[-+.eE0-9]+|u[0-9a-fA-F]{0,4}(?:\\u?[0-9a-fA-F]{0,3})?"
)


def iter_json_array(text: str, report) -> Iterator[object]:
    """Decode a JSON array element by element; stop quietly at a truncated last element.

    ``report`` (a :class:`skipdecode.datasets.ReadReport`) names the file in errors and records
    ``is_truncated`` / ``num_cut_records``.
    """
    decoder = json.JSONDecoder()
    index = _skip_space(text, 0)
    if index >= len(text) or text[index] != "[":
        raise ValueError(f"{report.path}: expected a JSON array of conversations")
    index = _skip_space(text, index + 1)
    while index < len(text) and text[index] != "]":
        try:
            element, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError as exc:
            if _is_cut_off(text, exc):
                report.is_truncated, report.num_cut_records = True, 1
                return
            raise ValueError(f"{report.path}: invalid JSON at character {exc.pos}") from exc
        yield element
        index = _skip_space(text, index)
        if index < len(text) and text[index] == ",":
            index = _skip_space(text, index + 1)
        elif index < len(text) and text[index] != "]":
            raise ValueError(f"{report.path}: invalid JSON at character {index} (expected , or ])")
    if index >= len(text):
        report.is_truncated = True  # cut off between two elements: nothing lost
    elif _skip_space(text, index + 1) < len(text):
        raise ValueError(f"{report.path}: unexpected data after the array's closing ]")


def _is_cut_off(text: str, error: json.JSONDecodeError) -> bool:
    """Whether a decode error means the file stops mid-element: the decoder ran into the end
    (an unterminated string only ends there: strict JSON strings hold no raw newlines), or all
    that follows the error is the start of a token (a literal, a number, a ``\\u`` escape)."""
    if error.msg.startswith("Unterminated string"):
        return True
    tail = text[error.pos :].rstrip(" \t\r\n")
    return not tail or _PARTIAL_TOKEN.fullmatch(tail) is not None


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\r\n":
        index += 1
    return index
