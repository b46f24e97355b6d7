"""The teacher's own answers to the training prompts, generated with the engine and cached.

Self-distillation needs no outside model and no human answers: the teacher is the model itself at
full depth (no adapter), decoding greedily. Answers are generated in batched chunks through the
offline engine and appended to ``answers.jsonl`` after every chunk, so an interrupted run resumes
where it stopped. ``meta.json`` records what the answers were generated with; a cache made with
other settings is refused rather than mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from skipdecode.training.chat import ChatPrompt

ANSWERS_FILE = "answers.jsonl"
META_FILE = "meta.json"


def prompt_digest(prompt_ids: Sequence[int]) -> str:
    """A short hash of a prompt's token ids (a cached answer belongs to exactly that prompt)."""
    return hashlib.sha1(json.dumps(list(prompt_ids)).encode()).hexdigest()[:16]


def read_cached_answers(cache_dir: str | os.PathLike) -> dict[str, dict]:
    """Cached answers by prompt id; a line cut off by a crash is ignored (it is redone)."""
    path = Path(cache_dir) / ANSWERS_FILE
    answers: dict[str, dict] = {}
    if not path.exists():
        return answers
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        answers[record["id"]] = record
    return answers


def _check_meta(cache_dir: Path, meta: dict) -> None:
    path = cache_dir / META_FILE
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved != meta:
            differing = sorted(k for k in set(saved) | set(meta) if saved.get(k) != meta.get(k))
            raise ValueError(
                f"{cache_dir} holds teacher answers made with other settings ({differing});"
                " pick another cache folder"
            )
    else:
        cache_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def teacher_answers(
    model: str | None,
    prompts: Sequence[ChatPrompt],
    cache_dir: str | os.PathLike,
    max_tokens: int,
    chunk_size: int = 128,
    dtype: str = "auto",
    device: str = "auto",
    show_progress: bool = True,
) -> dict[str, list[int]]:
    """Greedy full-depth answers (token ids, EOS included when generated) by prompt id.

    Only prompts missing from the cache are generated; the engine is loaded only if any are.
    """
    cache_dir = Path(cache_dir)
    meta = {
        "model": os.path.basename(model) if model else "default",
        "max_tokens": max_tokens,
        "decoding": "greedy, full depth, no adapter",
        "dtype": dtype,
    }
    _check_meta(cache_dir, meta)
    cached = read_cached_answers(cache_dir)
    todo = [p for p in prompts if cached.get(p.id, {}).get("prompt") != prompt_digest(p.prompt_ids)]
    if todo:
        _generate(model, todo, cache_dir, max_tokens, chunk_size, dtype, device, show_progress)
        cached = read_cached_answers(cache_dir)
    return {p.id: cached[p.id]["answer_ids"] for p in prompts}


def _generate(model, todo, cache_dir: Path, max_tokens, chunk_size, dtype, device, show) -> None:
    from skipdecode import LLM, SamplingParams

    llm = LLM(model, dtype=dtype, device=device, adapter="none")
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    began, done = time.perf_counter(), 0
    with open(cache_dir / ANSWERS_FILE, "a", encoding="utf-8") as out:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            outputs = llm.generate([p.prompt_ids for p in chunk], params)
            for prompt, output in zip(chunk, outputs):
                record = {
                    "id": prompt.id,
                    "prompt": prompt_digest(prompt.prompt_ids),
                    "answer_ids": list(output.token_ids),
                    "finish_reason": output.finish_reason,
                }
                out.write(json.dumps(record) + "\n")
            out.flush()
            done += sum(len(o.token_ids) for o in outputs)
            if show:
                rate = done / (time.perf_counter() - began)
                print(
                    f"teacher: {start + len(chunk)}/{len(todo)} prompts, {rate:.0f} tokens/s",
                    flush=True,
                )
