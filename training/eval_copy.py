"""``skipdecode eval copy``: exact-span copy accuracy at 1x..5x, and per-layer ablation.

The probe (:mod:`training.copy_probe`) asks for invented spans back. Each prompt goes through the
model's chat template as a single user message (the plain prompt for a model without one). Per
model, one engine generates greedily for all items at once, once per target speedup. The presets
use the schedule the model was trained for (the engine's ``default_skip``: the adapter's or the
checkpoint's skip_schedule.json) for ``decay_tokens``/``warmup_layers``, else the config's values.

``ablate_layers``: at full depth, the accuracy with each single decoder layer removed, on the
Hugging Face model and the probe's first ``ablate_items`` items (:mod:`training.copy_ablation`).

Writes ``results.json``, ``results.md``, ``generations.jsonl`` and, with ablation,
``layer_ablation.json`` and ``layer_ablation.md`` into ``out_dir``.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from skipdecode.chat import chat_prompt_ids, render_chat
from skipdecode.scheduler import SamplingParams, SkipConfig
from skipdecode.training import e2e
from skipdecode.training.copy_probe import KINDS, SCORING_RULE, ProbeItem, make_probe, score
from skipdecode.training.evaluate import DEFAULT_SPEEDUPS, ModelSpec


@dataclass(frozen=True)
class CopyEvalConfig:
    """One copy-probe run: which models, how many items, which speedups, optional ablation."""

    models: tuple[ModelSpec, ...]
    out_dir: str
    num_items: int = 100
    speedups: tuple[float, ...] = DEFAULT_SPEEDUPS
    max_tokens: int = 32  # tokens generated per answer
    decay_tokens: int = e2e.DEFAULT_DECAY_TOKENS  # for models without a skip_schedule.json
    warmup_layers: int = 1  # idem
    dtype: str = "auto"  # engine dtype; the HF ablation model is fp32
    device: str = "auto"
    seed: int = 0  # probe items and bootstrap resamples
    num_resamples: int = 1000
    ablate_layers: bool = False
    ablate_items: int = 50  # the first items of the same probe

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("CopyEvalConfig: give at least one model")
        if len({m.label for m in self.models}) != len(self.models):
            raise ValueError("CopyEvalConfig: model labels must be distinct")
        for name in ("num_items", "max_tokens", "ablate_items"):
            if getattr(self, name) < 1:
                raise ValueError(f"CopyEvalConfig: {name} must be >= 1 ({getattr(self, name)})")
        if not self.speedups or any(s < 1 for s in self.speedups):
            raise ValueError(f"CopyEvalConfig: speedups must be numbers >= 1 ({self.speedups})")


def evaluate_copy(cfg: CopyEvalConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every model at every speedup (and its layer ablation); writes the reports to out_dir."""
    from skipdecode.training.copy_ablation import ablate_layers, ablation_markdown

    # The ablation items are the probe's first ones; make_probe(n) is a prefix of make_probe(m).
    items = make_probe(max(cfg.num_items, cfg.ablate_items if cfg.ablate_layers else 0), cfg.seed)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"config": asdict(cfg), "scoring": SCORING_RULE, "models": []}
    prompts = {}  # label -> every item's prompt ids, for the ablation
    with open(out_dir / "generations.jsonl", "w", encoding="utf-8") as generations:
        for spec in cfg.models:
            result, prompts[spec.label] = evaluate_model(spec, items, cfg, generations, log)
            results["models"].append(result)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    (out_dir / "results.md").write_text(results_markdown(results), encoding="utf-8")
    log(f"wrote {out_dir / 'results.json'}, results.md, generations.jsonl")
    if cfg.ablate_layers:
        ablations = []
        for spec, result in zip(cfg.models, results["models"]):
            engine_1x = [row["texts"] for row in result["rows"] if row["target_speedup"] == 1.0]
            ablation = ablate_layers(
                spec,
                items[: cfg.ablate_items],
                prompts[spec.label][: cfg.ablate_items],
                engine_1x[0] if engine_1x else None,
                max_tokens=cfg.max_tokens,
                device=cfg.device,
                num_resamples=cfg.num_resamples,
                seed=cfg.seed,
                log=log,
            )
            ablations.append(ablation)
        results["layer_ablation"] = ablations
        (out_dir / "layer_ablation.json").write_text(
            json.dumps(ablations, indent=2), encoding="utf-8"
        )
        (out_dir / "layer_ablation.md").write_text(ablation_markdown(ablations), encoding="utf-8")
        log(f"wrote {out_dir / 'layer_ablation.json'}, layer_ablation.md")
    return results


def probe_prompt_ids(tokenizer, prompt: str) -> tuple[list[int], str]:
    """(token ids, format) of one probe prompt: a single user turn under the chat template, or
    the plain prompt, tokenized as the engine tokenizes strings, for a model without one."""
    if not getattr(tokenizer, "chat_template", None):
        return list(tokenizer(prompt, add_special_tokens=True).input_ids), "plain"
    text = render_chat(tokenizer, [{"role": "user", "content": prompt}])
    return chat_prompt_ids(tokenizer, text), "chat template"


def evaluate_model(
    spec: ModelSpec,
    items: Sequence[ProbeItem],
    cfg: CopyEvalConfig,
    generations: TextIO,
    log: Callable[[str], None],
) -> tuple[dict[str, Any], list[list[int]]]:
    """All speedup rows of one model (one engine, the first ``num_items`` items at once per
    speedup) and the prompt ids of every item (the ablation reuses them)."""
    from skipdecode.llm import LLM

    llm = LLM(
        spec.path, adapter=spec.adapter, dtype=cfg.dtype, device=cfg.device, max_num_seqs=len(items)
    )
    encoded = [probe_prompt_ids(llm.tokenizer, item.prompt) for item in items]
    all_prompts = [ids for ids, _ in encoded]
    items, prompts = items[: cfg.num_items], all_prompts[: cfg.num_items]
    trained = llm.default_skip  # the checkpoint's or adapter's skip_schedule.json default
    family = llm.engine.preset_family  # the warm-up and decay its schedules were trained with
    decay_tokens = family.decay_tokens if trained else cfg.decay_tokens
    warmup_layers = family.warmup_layers if trained else cfg.warmup_layers
    result: dict[str, Any] = {
        "label": spec.label,
        "path": spec.path,
        "adapter": llm.adapter_path,
        "num_layers": llm.engine.num_layers,
        "prompt_format": encoded[0][1],
        "presets_from": "skip_schedule.json" if trained else "config",
        "decay_tokens": decay_tokens,
        "warmup_layers": warmup_layers,
        "rows": [],
    }
    params = SamplingParams(temperature=0.0, max_tokens=cfg.max_tokens)
    for speedup in cfg.speedups:
        skip = SkipConfig.for_speedup(speedup, decay_tokens, warmup_layers)
        outputs = llm.generate(prompts, params, skip=skip)
        texts = [out.text for out in outputs]
        scores = score(items, texts, cfg.num_resamples, cfg.seed)
        is_correct = scores.pop("is_correct")
        row = {
            "target_speedup": speedup,
            "schedule": asdict(llm.engine.resolve_skip(skip)),
            **scores,
            "mean_theoretical_speedup": sum(o.theoretical_speedup for o in outputs) / len(outputs),
            "mean_generated_tokens": sum(o.num_generated_tokens for o in outputs) / len(outputs),
            "texts": texts,
        }
        result["rows"].append(row)
        _write_generations(generations, spec.label, speedup, items, outputs, is_correct)
        log(
            f"{spec.label} {speedup:g}x: copy accuracy {row['accuracy']:.1f}%"
            f" [{row['accuracy_ci'][0]:.1f}, {row['accuracy_ci'][1]:.1f}]"
            f" (mean speedup {row['mean_theoretical_speedup']:.2f}x)"
        )
    del llm
    gc.collect()
    return result, all_prompts


def _write_generations(
    generations: TextIO, label: str, speedup: float, items, outputs, is_correct
) -> None:
    """One JSON line per item: the item, the answer, its verdict and theoretical speedup."""
    for item, out, correct in zip(items, outputs, is_correct):
        record = {"model": label, "target_speedup": speedup, **asdict(item)}
        record.update(text=out.text, is_correct=correct, speedup=out.theoretical_speedup)
        generations.write(json.dumps(record) + "\n")


def results_markdown(results: dict[str, Any]) -> str:
    """The model x speedup table: accuracy with its interval, per kind, mean speedup."""
    cfg = results["config"]
    lines = [
        "# Copy probe: exact-span accuracy at each speedup",
        "",
        f"{cfg['num_items']} invented spans (seed {cfg['seed']}), greedy, at most"
        f" {cfg['max_tokens']} tokens; accuracy in % with a 95% bootstrap interval over items.",
        f"Scoring: {results['scoring']}",
        "",
        "| model | target | accuracy [95% CI] | " + " | ".join(KINDS) + " | mean speedup |",
        "|---|---|---|" + "---|" * len(KINDS) + "---|",
    ]
    for model in results["models"]:
        for row in model["rows"]:
            low, high = row["accuracy_ci"]
            kinds = " | ".join(
                f"{row['per_kind'][k]:.1f}" if k in row["per_kind"] else "-" for k in KINDS
            )
            lines.append(
                f"| {model['label']} | {row['target_speedup']:g}x | {row['accuracy']:.1f}"
                f" [{low:.1f}, {high:.1f}] | {kinds} | {row['mean_theoretical_speedup']:.2f}x |"
            )
    lines.append("")
    for model in results["models"]:
        lines.append(
            f"- {model['label']}: {model['num_layers']} layers, {model['prompt_format']} prompts,"
            f" presets from {model['presets_from']} (decay_tokens {model['decay_tokens']},"
            f" warmup_layers {model['warmup_layers']})"
        )
    return "\n".join(lines) + "\n"
