"""``skipdecode eval e2e``: BLEU, ROUGE-L and SER at 1x..5x theoretical speedup with the engine.

For each model, one engine generates greedily for every MR of the chosen split at once
(``LLM.generate`` with all prompts), once per target speedup. The speedup presets use the
checkpoint's own ``decay_tokens``/``warmup_layers`` when it has a ``skip_schedule.json``, else
the command-line values. The split is by MR or by restaurant name (:mod:`e2e_split`); the MRs are
scored as one set and per group (seen names, unseen names, fresh invented names:
:mod:`e2e_groups`). Every row reports BLEU, ROUGE-L, the slot error rate (:mod:`ser`) and the
share of names copied, with 95% bootstrap intervals, the measured tokens/s of the whole
``generate`` call (prefill included) and the mean theoretical speedup ``L * N / sum(D(g))``.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from skipdecode.checkpoint_schedule import SCHEDULE_FILE, load_schedule_record
from skipdecode.scheduler import SamplingParams, SkipConfig
from skipdecode.training import e2e, e2e_split
from skipdecode.training.e2e_groups import GROUPS, EvalSet, build_eval_set, score_group
from skipdecode.training.report import write_reports

DEFAULT_SPEEDUPS = (1.0, 2.0, 3.0, 4.0, 5.0)


@dataclass(frozen=True)
class ModelSpec:
    """One model to evaluate: a label for the table, a path (None: the default model) and an
    adapter merged at load ("none": the plain model)."""

    label: str
    path: str | None
    adapter: str | None = "none"


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation run: which models, which data, which speedups."""

    models: tuple[ModelSpec, ...]
    out_dir: str
    data: str = e2e.DEFAULT_E2E_CSV
    split: str = "val"  # train | val | all (by split_by)
    split_by: str = "mr"  # mr | name (training/e2e_split.py)
    val_percent: int = e2e.DEFAULT_VAL_PERCENT
    name_val_percent: int = e2e_split.DEFAULT_NAME_VAL_PERCENT
    fresh: bool = True  # also score the validation MRs with invented names (e2e_groups.py)
    speedups: tuple[float, ...] = DEFAULT_SPEEDUPS
    decay_tokens: int = e2e.DEFAULT_DECAY_TOKENS  # for models without a skip_schedule.json
    warmup_layers: int = 1
    max_tokens: int = 80
    max_mrs: int | None = None  # evaluate only the first MRs (smoke runs)
    dtype: str = "auto"
    quantization: str = "auto"  # weight-only int8/int4 as the server runs them (none: float)
    device: str = "auto"
    num_resamples: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("EvalConfig: give at least one model")
        if len({m.label for m in self.models}) != len(self.models):
            raise ValueError("EvalConfig: model labels must be distinct")
        if not self.speedups or any(s < 1 for s in self.speedups):
            raise ValueError("EvalConfig: speedups must be numbers >= 1")
        e2e_split.check_split(self.split_by, self.val_percent, self.name_val_percent)


def evaluate(cfg: EvalConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate every model at every speedup; writes JSON, markdown and PNG into ``out_dir``."""
    rows = e2e.read_e2e_csv(cfg.data)
    rows = e2e_split.select_split(
        rows, cfg.split, cfg.split_by, cfg.val_percent, cfg.name_val_percent
    )
    groups = e2e.group_by_mr(rows)
    if cfg.max_mrs is not None:
        groups = dict(list(groups.items())[: cfg.max_mrs])
    eval_set = build_eval_set(groups, cfg, cfg.fresh, cfg.seed)
    counts = {g: len(eval_set.indices(g)) for g in GROUPS}
    log(f"{cfg.split} split by {cfg.split_by} of {cfg.data}: MRs per group {counts}")
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = e2e_split.split_record(cfg.split_by, cfg.val_percent, cfg.name_val_percent)
    results: dict[str, Any] = {
        "config": {**asdict(cfg), **record, "num_mrs": counts["all"], "group_sizes": counts},
        "models": [],
    }
    with open(out_dir / "generations.jsonl", "w", encoding="utf-8") as generations:
        for spec in cfg.models:
            model_result = evaluate_model(spec, eval_set, cfg, generations, log)
            results["models"].append(model_result)
    write_reports(results, out_dir)
    log(f"wrote {out_dir / 'results.json'} and results.md")
    return results


def preset_params(spec: ModelSpec, cfg: EvalConfig) -> tuple[int, int, dict | None]:
    """(decay_tokens, warmup_layers, schedule record) for a model's presets.

    An adapter's ``skip_schedule.json`` names the schedules it was trained for, so it wins over
    the base checkpoint's; both are checked for overlap with the evaluated split.
    """
    places = [spec.adapter if spec.adapter not in (None, "none", "auto") else None, spec.path]
    files = [os.path.join(p, SCHEDULE_FILE) for p in places if p]
    records = [load_schedule_record(f) for f in files if os.path.exists(f)]
    if not records:
        return cfg.decay_tokens, cfg.warmup_layers, None
    for record in records:
        data = record.get("data") or {}
        # Trained on chat data: E2E is out of domain, no overlap to check.
        if data.get("kind") != "chat" and cfg.split != "all":
            check_no_overlap(spec.label, data, cfg)
    record = records[0]
    if (record.get("data") or {}).get("kind") == "chat":
        return cfg.decay_tokens, cfg.warmup_layers, record
    default: SkipConfig = record["default"]
    return default.decay_tokens, default.warmup_layers, record


def check_no_overlap(label: str, data: dict, cfg: EvalConfig) -> None:
    """Refuse to evaluate a checkpoint on MRs (or names) its training data held."""
    trained = {
        "val_percent": data.get("val_percent", cfg.val_percent),
        "split_by": data.get("split_by", "mr"),
        "name_val_percent": data.get("name_val_percent", cfg.name_val_percent),
    }
    if trained["val_percent"] != cfg.val_percent:
        raise ValueError(
            f"{label}: trained with val_percent={trained['val_percent']}, evaluating with"
            f" {cfg.val_percent}: the validation MRs would overlap its training data"
        )
    if cfg.split_by == "name" and trained["split_by"] != "name":
        raise ValueError(
            f"{label}: trained on the split by MR, whose training data holds every name:"
            " evaluating it on the split by name would call seen names unseen"
        )
    if cfg.split_by == "name" and trained["name_val_percent"] != cfg.name_val_percent:
        raise ValueError(
            f"{label}: trained with name_val_percent={trained['name_val_percent']}, evaluating"
            f" with {cfg.name_val_percent}: unseen names would overlap its training data"
        )


def evaluate_model(
    spec: ModelSpec,
    eval_set: EvalSet,
    cfg: EvalConfig,
    generations,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """All speedup rows of one model (one engine, all MRs submitted at once per speedup)."""
    from skipdecode.llm import LLM

    decay_tokens, warmup_layers, record = preset_params(spec, cfg)
    llm = LLM(
        spec.path,
        adapter=spec.adapter,
        dtype=cfg.dtype,
        quantization=cfg.quantization,
        device=cfg.device,
        max_num_seqs=max(1, len(eval_set.mrs)),
    )
    prompts = [e2e.prompt_ids(llm.tokenizer, mr) for mr in eval_set.mrs]
    params = SamplingParams(temperature=0.0, max_tokens=cfg.max_tokens)
    result: dict[str, Any] = {
        "label": spec.label,
        "path": spec.path,
        "num_layers": llm.engine.num_layers,
        "trained_for": (record or {}).get("trained_for"),
        "rows": [],
    }
    for speedup in cfg.speedups:
        skip = SkipConfig.for_speedup(speedup, decay_tokens, warmup_layers)
        schedule = llm.engine.resolve_skip(skip)
        began = time.perf_counter()
        outputs = llm.generate(prompts, params, skip=skip)
        seconds = time.perf_counter() - began
        hypotheses = [out.text.strip() for out in outputs]
        groups = {
            g: score_group(eval_set, hypotheses, g, cfg.num_resamples, cfg.seed) for g in GROUPS
        }
        num_tokens = sum(out.num_generated_tokens for out in outputs)
        row = {
            "target_speedup": speedup,
            "schedule": asdict(schedule),
            "mean_theoretical_speedup": sum(o.theoretical_speedup for o in outputs) / len(outputs),
            **{k: v for k, v in groups["all"].items() if k != "num_mrs"},
            "groups": {g: v for g, v in groups.items() if v is not None and g != "all"},
            "tokens_per_s": num_tokens / seconds,
            "num_generated_tokens": num_tokens,
            "mean_generated_tokens": num_tokens / len(outputs),
            "wall_seconds": seconds,
        }
        result["rows"].append(row)
        for mr, group, text in zip(eval_set.mrs, eval_set.groups, hypotheses):
            item = {"model": spec.label, "target_speedup": speedup, "group": group}
            generations.write(json.dumps({**item, "mr": mr, "text": text}) + "\n")
        by_group = ", ".join(
            f"{g} BLEU {v['bleu']:.1f} SER {v['ser']:.1f} name {v['name_copied']:.0f}%"
            for g, v in row["groups"].items()
        )
        log(
            f"{spec.label} {speedup:g}x: BLEU {row['bleu']:.1f} ROUGE-L {row['rouge_l']:.1f};"
            f" {by_group} (mean speedup {row['mean_theoretical_speedup']:.2f}x,"
            f" {row['tokens_per_s']:.0f} tok/s, {seconds:.0f}s)"
        )
    del llm
    gc.collect()
    return result
