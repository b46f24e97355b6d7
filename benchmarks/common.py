"""Helpers shared by the bench commands: prompts, percentiles, tables and JSON results."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PERCENTILES = (50, 90, 99)


def parse_list(text: str, kind: Callable[[str], float] = float) -> list:
    """``"1,2,3"`` -> ``[1.0, 2.0, 3.0]`` (or ints with ``kind=int``); ValueError if empty."""
    values = [kind(part) for part in text.split(",") if part.strip()]
    if not values:
        raise ValueError(f"expected a comma-separated list, got {text!r}")
    return values


def special_token_ids(tokenizer) -> set[int]:
    """Ids a random prompt must avoid: special and added tokens (BOS, EOS, chat markers)."""
    if tokenizer is None:
        return set()
    ids = set(tokenizer.all_special_ids)
    ids.update(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return ids


def random_prompt_ids(
    num_prompts: int, input_len: int, vocab_size: int, avoid_ids: set[int], seed: int
) -> list[list[int]]:
    """``num_prompts`` lists of exactly ``input_len`` token ids in ``[0, vocab_size)``.

    Drawn from a generator seeded with ``seed``, so every tool (offline, online, Hugging Face)
    sends the same prompts for the same seed. Ids in ``avoid_ids`` never appear.
    """
    allowed = np.setdiff1d(np.arange(vocab_size), np.fromiter(avoid_ids, dtype=np.int64))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(allowed), size=(num_prompts, input_len))
    return allowed[picks].tolist()


@dataclass(frozen=True)
class PromptSource:
    """Vocabulary facts for random prompts, read from a model's config and tokenizer."""

    vocab_size: int
    avoid_ids: frozenset[int]

    @classmethod
    def from_model(cls, model: str | None) -> PromptSource:
        """From a model path (None: the default model); loads no weights."""
        from skipdecode.model_runner.weights import (
            load_hf_config,
            load_tokenizer,
            resolve_model_path,
        )

        path = resolve_model_path(model)
        return cls.from_loaded(load_hf_config(path), load_tokenizer(path))

    @classmethod
    def from_loaded(cls, hf_config, tokenizer) -> PromptSource:
        """From a loaded config and tokenizer (None: every id of the config's vocabulary)."""
        vocab = hf_config.vocab_size
        if tokenizer is not None:
            vocab = min(vocab, len(tokenizer))
        return cls(vocab, frozenset(special_token_ids(tokenizer)))

    def prompts(self, num_prompts: int, input_len: int, seed: int) -> list[list[int]]:
        return random_prompt_ids(num_prompts, input_len, self.vocab_size, set(self.avoid_ids), seed)


def percentiles(
    values: Sequence[float],
    prefix: str,
    scale: float = 1.0,
    points: Sequence[int] = PERCENTILES,
) -> dict[str, float]:
    """``{prefix_mean, prefix_p50, prefix_p90, prefix_p99}`` of ``values * scale`` (NaN if none).

    ``points`` chooses other percentiles (``bench serve`` adds p95).
    """
    if not values:
        nan = float("nan")
        return {f"{prefix}_mean": nan, **{f"{prefix}_p{p}": nan for p in points}}
    array = np.asarray(values, dtype=np.float64) * scale
    out = {f"{prefix}_mean": float(array.mean())}
    out.update({f"{prefix}_p{p}": float(np.percentile(array, p)) for p in points})
    return out


Column = tuple[str, str, str]  # (key in the row, header, format spec)


def format_table(rows: Sequence[dict], columns: Sequence[Column]) -> str:
    """A plain aligned text table; missing or None values print as ``-``."""

    def cell(row: dict, key: str, spec: str) -> str:
        value = row.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return format(value, spec)

    body = [[cell(row, key, spec) for key, _, spec in columns] for row in rows]
    headers = [header for _, header, _ in columns]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in body)
    return "\n".join(lines)


def machine_info() -> dict:
    """What ran the benchmark: host, CPU count, Python, torch and the accelerator if any."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(0)
    except ImportError:  # bench serve may run without torch
        pass
    return info


def write_results(path: str | None, benchmark: str, args: dict, results: dict) -> dict:
    """Wrap results with their benchmark name, arguments and machine; write JSON if ``path``."""
    payload = {
        "benchmark": benchmark,
        "created_unix": time.time(),
        "args": {k: v for k, v in args.items() if k != "func"},
        "machine": machine_info(),
        **results,
    }
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")
    return payload


def speedup_label(speedup: float) -> str:
    """``2.0`` -> ``"2x"``: how tables name a target speedup."""
    return f"{speedup:g}x"
