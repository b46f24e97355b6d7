"""``skipdecode eval chat``: held-out chat quality at 1x..5x, for any models on one tokenizer.

On the held-out side of the chat split (``test`` by default, see :mod:`skipdecode.datasets`), one
prompt per conversation (:mod:`training.chat`), greedy, at each target speedup:

- teacher-forced perplexity of the data's own answers (cut at ``max_answer_tokens``), with every
  answer token at its SkipDecode depth (the training forward, :func:`target_logits`);
- the engine's greedy answers (``max_tokens``), batched: their agreement with the *reference
  model's* full-depth answers (the first model given; put the base model first), their
  repeated 4-grams, the mean theoretical speedup and the tokens/s of the batched call.

Each finished (model, speedup) row is appended to ``rows.jsonl`` at once, and a rerun reuses the
rows already there, so an interrupted evaluation resumes. ``results.json``, ``results.md``,
``quality_vs_speedup.png`` and ``side_by_side.md`` are written at the end.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skipdecode import datasets
from skipdecode.scheduler import SamplingParams, SkipConfig
from skipdecode.training import chat
from skipdecode.training.batch import IGNORE_INDEX, Example, collate
from skipdecode.training.chat_report import write_chat_reports
from skipdecode.training.data import chat_split_prompts
from skipdecode.training.skip_forward import target_logits

ROWS_FILE = "rows.jsonl"


@dataclass(frozen=True)
class ChatModelSpec:
    """One model: a label, a path (None: the default GGUF) and an adapter ("none", a path)."""

    label: str
    path: str | None
    adapter: str | None = "none"


@dataclass(frozen=True)
class ChatEvalConfig:
    """One chat evaluation run."""

    models: tuple[ChatModelSpec, ...]
    out_dir: str
    data: str = "sharegpt"
    split: str = "test"  # train | val | test
    val_percent: int = datasets.DEFAULT_VAL_PERCENT
    test_percent: int = datasets.DEFAULT_TEST_PERCENT
    max_conversations: int | None = None
    speedups: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0)
    # None: the model's preset family (its skip_schedule.json's trained warm-up and decay, else
    # warm-up 1 over 32 tokens), as the server resolves {"speedup": x}.
    decay_tokens: int | None = None
    warmup_layers: int | None = None
    max_prompt_tokens: int = chat.DEFAULT_MAX_PROMPT_TOKENS
    max_answer_tokens: int = 64  # answer tokens scored by perplexity
    max_tokens: int = 64  # tokens generated per answer
    batch_size: int = 16  # conversations per perplexity forward
    dtype: str = "auto"
    device: str = "auto"
    num_resamples: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("ChatEvalConfig: give at least one model")
        if len({m.label for m in self.models}) != len(self.models):
            raise ValueError("ChatEvalConfig: model labels must be distinct")
        if self.split not in ("train", "val", "test"):
            raise ValueError(f"ChatEvalConfig: split must be train, val or test ({self.split!r})")
        if not self.speedups or any(s < 1 for s in self.speedups) or 1.0 not in self.speedups:
            raise ValueError("ChatEvalConfig: speedups must be numbers >= 1 and include 1")


def evaluate_chat(cfg: ChatEvalConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every model at every speedup; writes the reports into ``out_dir``."""
    from skipdecode.training.modeling import load_training_tokenizer

    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_training_tokenizer(cfg.models[0].path)
    prompts, record = chat_split_prompts(cfg, tokenizer, cfg.split, 1 << 30, cfg.max_conversations)
    log(f"{len(prompts)} {cfg.split} prompts ({record['read']})")
    done = _read_rows(out_dir / ROWS_FILE)
    for spec in cfg.models:
        todo = [s for s in cfg.speedups if (spec.label, s) not in done]
        if todo:
            for row in _evaluate_model(spec, prompts, todo, cfg, log):
                done[(spec.label, row["target_speedup"])] = row
                with open(out_dir / ROWS_FILE, "a", encoding="utf-8") as rows:
                    rows.write(json.dumps(row) + "\n")
    reference = done[(cfg.models[0].label, 1.0)]["answers"]
    results = {
        "config": {**asdict(cfg), "split_rule": datasets.SPLIT_RULE, "data_record": record},
        "reference_model": cfg.models[0].label,
        "prompts": [{"id": p.id, "messages": list(p.messages)} for p in prompts],
        "models": [
            {
                "label": spec.label,
                "path": spec.path,
                "adapter": spec.adapter,
                "rows": [
                    summarize(done[(spec.label, s)], reference, tokenizer, cfg)
                    for s in cfg.speedups
                ],
            }
            for spec in cfg.models
        ],
    }
    write_chat_reports(results, done, out_dir)
    log(f"wrote {out_dir / 'results.json'}, results.md and side_by_side.md")
    return results


def _read_rows(path: Path) -> dict[tuple[str, float], dict]:
    rows: dict[tuple[str, float], dict] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut off by an interruption: that row is redone
            rows[(row["label"], row["target_speedup"])] = row
    return rows


def _evaluate_model(spec: ChatModelSpec, prompts, speedups, cfg: ChatEvalConfig, log):
    """Raw rows (per-conversation values) of one model at ``speedups``."""
    from skipdecode.llm import LLM
    from skipdecode.training.modeling import load_causal_lm, pick_device

    llm = LLM(spec.path, adapter=spec.adapter, dtype=cfg.dtype, device=cfg.device, max_num_seqs=128)
    params = SamplingParams(temperature=0.0, max_tokens=cfg.max_tokens)
    generated = {}
    for speedup in speedups:
        skip = SkipConfig.for_speedup(speedup, cfg.decay_tokens, cfg.warmup_layers)
        began = time.perf_counter()
        outputs = llm.generate([p.prompt_ids for p in prompts], params, skip=skip)
        seconds = time.perf_counter() - began
        generated[speedup] = (outputs, seconds, asdict(llm.engine.resolve_skip(skip)))
    del llm
    gc.collect()
    model = load_causal_lm(spec.path, pick_device(cfg.device), spec.adapter).eval()
    for speedup in speedups:
        outputs, seconds, schedule = generated[speedup]
        began = time.perf_counter()
        nll, num_tokens = answer_nll(model, prompts, schedule_of(schedule), cfg.batch_size)
        row = {
            "label": spec.label,
            "target_speedup": speedup,
            "schedule": schedule,
            "answers": [list(o.token_ids) for o in outputs],
            "texts": [o.text for o in outputs],
            "theoretical_speedups": [o.theoretical_speedup for o in outputs],
            "generate_seconds": seconds,
            "nll": nll,
            "num_answer_tokens": num_tokens,
            "perplexity_seconds": time.perf_counter() - began,
        }
        ppl = float(np.exp(sum(nll) / sum(num_tokens)))
        num_generated = sum(len(a) for a in row["answers"])
        log(
            f"{spec.label} {speedup:g}x: perplexity {ppl:.2f},"
            f" {num_generated / seconds:.0f} generated tokens/s"
        )
        yield row
    del model
    gc.collect()


def schedule_of(fields: dict):
    """A DepthSchedule from its ``asdict`` record."""
    from skipdecode.scheduler import DepthSchedule

    return DepthSchedule(**fields)


@torch.no_grad()
def answer_nll(model, prompts, schedule, batch_size: int) -> tuple[list[float], list[int]]:
    """Per prompt: (sum of NLL over its reference answer tokens, their number)."""
    order = sorted(
        range(len(prompts)),
        key=lambda i: len(prompts[i].prompt_ids) + len(prompts[i].reference_ids),
    )
    nll, counts = [0.0] * len(prompts), [0] * len(prompts)
    pad_id = 0
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = collate(
            [Example(prompts[i].prompt_ids, prompts[i].reference_ids) for i in chunk], pad_id
        )
        is_target = batch.labels != IGNORE_INDEX  # [B, T]
        logits = target_logits(model, batch, schedule, is_target).float()  # [N, V]
        token_nll = torch.nn.functional.cross_entropy(
            logits, batch.labels[is_target], reduction="none"
        )
        per_row = torch.zeros(len(chunk)).index_add_(
            0, is_target.nonzero()[:, 0], token_nll
        )  # [B] summed NLL of each row's targets
        for row, index in enumerate(chunk):
            nll[index] = float(per_row[row])
            counts[index] = int(is_target[row].sum())
    return nll, counts


def summarize(row: dict, reference: list[list[int]], tokenizer, cfg: ChatEvalConfig) -> dict:
    """The corpus figures of one raw row, with bootstrap intervals over conversations."""
    from skipdecode.training import chat_metrics as m

    answers = row["answers"]
    texts = [tokenizer.decode(a, skip_special_tokens=True) for a in answers]
    ref_texts = [tokenizer.decode(a, skip_special_tokens=True) for a in reference]
    reps = np.asarray([m.repeated_ngrams(a) for a in answers], dtype=np.float64)
    firsts = np.asarray([m.first_difference(a, r) for a, r in zip(answers, reference)], float)
    k, s = cfg.num_resamples, cfg.seed
    ppl, ppl_ci = m.perplexity(np.asarray(row["nll"]), np.asarray(row["num_answer_tokens"]), k, s)
    rouge, rouge_ci = m.mean_with_ci(m.rouge_l(texts, ref_texts), k, s)
    first, first_ci = m.mean_with_ci(firsts, k, s)
    repeat, repeat_ci = m.repetition(reps[:, 0], reps[:, 1], k, s)
    num_generated = sum(len(a) for a in answers)
    return {
        "target_speedup": row["target_speedup"],
        "schedule": row["schedule"],
        "perplexity": ppl,
        "perplexity_ci": ppl_ci,
        "rouge_l_vs_reference": rouge,
        "rouge_l_ci": rouge_ci,
        "first_difference": first,
        "first_difference_ci": first_ci,
        "repeated_4grams_percent": repeat,
        "repeated_4grams_ci": repeat_ci,
        "mean_theoretical_speedup": float(np.mean(row["theoretical_speedups"])),
        "tokens_per_s": num_generated / row["generate_seconds"],
        "mean_generated_tokens": num_generated / len(answers),
        "num_conversations": len(answers),
    }
