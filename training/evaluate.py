"""``skipdecode eval e2e``: BLEU/ROUGE-L at 1x..5x theoretical speedup with the engine.

For each model, one engine generates greedily for every MR of the chosen split at once
(``LLM.generate`` with all prompts), once per target speedup. The speedup presets use the
checkpoint's own ``decay_tokens``/``warmup_layers`` when it has a ``skip_schedule.json``, else
the command-line values. Every row reports BLEU and ROUGE-L with 95% bootstrap intervals, the
measured tokens/s of the whole ``generate`` call (prefill included) and the mean theoretical
speedup ``L * N / sum(D(g))`` of the generations.
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
from skipdecode.training import e2e
from skipdecode.training.metrics import score_corpus
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
    split: str = "val"  # train | val | all (by the MR split rule)
    val_percent: int = e2e.DEFAULT_VAL_PERCENT
    speedups: tuple[float, ...] = DEFAULT_SPEEDUPS
    decay_tokens: int = e2e.DEFAULT_DECAY_TOKENS  # for models without a skip_schedule.json
    warmup_layers: int = 1
    max_tokens: int = 80
    max_mrs: int | None = None  # evaluate only the first MRs (smoke runs)
    dtype: str = "auto"
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


def evaluate(cfg: EvalConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate every model at every speedup; writes JSON, markdown and PNG into ``out_dir``."""
    rows = e2e.select_split(e2e.read_e2e_csv(cfg.data), cfg.split, cfg.val_percent)
    groups = e2e.group_by_mr(rows)
    mrs = list(groups)[: cfg.max_mrs] if cfg.max_mrs is not None else list(groups)
    references = [groups[mr] for mr in mrs]
    log(f"{len(mrs)} MRs, {sum(map(len, references))} references ({cfg.split} split of {cfg.data})")
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "config": {**asdict(cfg), "split_rule": e2e.SPLIT_RULE, "num_mrs": len(mrs)},
        "models": [],
    }
    with open(out_dir / "generations.jsonl", "w", encoding="utf-8") as generations:
        for spec in cfg.models:
            model_result = evaluate_model(spec, mrs, references, cfg, generations, log)
            results["models"].append(model_result)
    write_reports(results, out_dir)
    log(f"wrote {out_dir / 'results.json'}, results.md and quality_vs_speedup.png")
    return results


def preset_params(spec: ModelSpec, cfg: EvalConfig) -> tuple[int, int, dict | None]:
    """(decay_tokens, warmup_layers, schedule record) for a model's presets."""
    file = os.path.join(spec.path, SCHEDULE_FILE) if spec.path else None
    if file is None or not os.path.exists(file):
        return cfg.decay_tokens, cfg.warmup_layers, None
    record = load_schedule_record(file)
    data = record.get("data") or {}
    if data.get("kind") == "chat":  # trained on chat data: E2E is out of domain, no overlap
        return cfg.decay_tokens, cfg.warmup_layers, record
    if cfg.split != "all" and data.get("val_percent", cfg.val_percent) != cfg.val_percent:
        raise ValueError(
            f"{spec.label}: trained with val_percent={data['val_percent']}, evaluating with"
            f" {cfg.val_percent}: the validation MRs would overlap its training data"
        )
    default: SkipConfig = record["default"]
    return default.decay_tokens, default.warmup_layers, record


def evaluate_model(
    spec: ModelSpec,
    mrs: list[str],
    references: list[list[str]],
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
        device=cfg.device,
        max_num_seqs=max(1, len(mrs)),
    )
    prompts = [e2e.prompt_ids(llm.tokenizer, mr) for mr in mrs]
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
        scores = score_corpus(hypotheses, references, cfg.num_resamples, cfg.seed)
        num_tokens = sum(out.num_generated_tokens for out in outputs)
        row = {
            "target_speedup": speedup,
            "schedule": asdict(schedule),
            "mean_theoretical_speedup": sum(o.theoretical_speedup for o in outputs) / len(outputs),
            "bleu": scores.bleu,
            "bleu_ci": list(scores.bleu_ci),
            "rouge_l": scores.rouge_l,
            "rouge_l_ci": list(scores.rouge_l_ci),
            "tokens_per_s": num_tokens / seconds,
            "num_generated_tokens": num_tokens,
            "mean_generated_tokens": num_tokens / len(outputs),
            "wall_seconds": seconds,
        }
        result["rows"].append(row)
        for mr, hypothesis in zip(mrs, hypotheses):
            item = {"model": spec.label, "target_speedup": speedup, "mr": mr, "text": hypothesis}
            generations.write(json.dumps(item) + "\n")
        log(
            f"{spec.label} {speedup:g}x: BLEU {scores.bleu:.1f} ROUGE-L {scores.rouge_l:.1f}"
            f" (mean speedup {row['mean_theoretical_speedup']:.2f}x,"
            f" {row['tokens_per_s']:.0f} tok/s, {seconds:.0f}s)"
        )
    del llm
    gc.collect()
    return result
