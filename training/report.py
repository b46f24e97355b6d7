"""Write an evaluation's results: JSON, a markdown table and a quality-vs-speedup plot."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from skipdecode.training.e2e_group_report import group_tables


def write_reports(
    results: dict[str, Any], out_dir: str | Path, log: Callable[[str], None] = print
) -> None:
    """``results.json``, ``results.md`` and ``quality_vs_speedup.png`` in ``out_dir`` (the plot
    only where matplotlib is installed)."""
    out_dir = Path(out_dir)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "results.md").write_text(markdown_table(results))
    plot_if_available(plot, results, out_dir / "quality_vs_speedup.png", log)


def plot_if_available(
    draw: Callable[[dict[str, Any], Path], None],
    results: dict[str, Any],
    path: Path,
    log: Callable[[str], None] = print,
) -> bool:
    """``draw(results, path)`` where matplotlib imports; otherwise one line to ``log``.

    matplotlib is an optional dependency: the JSON and markdown reports are the results, the plot
    is a view of them, so an evaluation must not fail for the lack of it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log(f"skipped {path.name}: matplotlib is not installed (pip install matplotlib)")
        return False
    draw(results, path)
    return True


def _schedule_text(schedule: dict[str, Any]) -> str:
    if schedule["min_depth"] == schedule["num_layers"] == schedule["max_depth"]:
        return f"full ({schedule['num_layers']})"
    return (
        f"{schedule['max_depth']}→{schedule['min_depth']} over {schedule['decay_tokens']},"
        f" w={schedule['warmup_layers']}"
    )


def markdown_table(results: dict[str, Any]) -> str:
    """One row per (model, target speedup)."""
    config = results["config"]
    lines = [
        f"E2E {config['split']} split by {config.get('split_by', 'mr')}"
        f" ({config['num_mrs']} MRs, {_rules(config)}); greedy, max {config['max_tokens']} tokens;"
        f" 95% bootstrap intervals over MRs ({config['num_resamples']} resamples).",
        "",
        "| model | target | mean theoretical speedup | depths (D_max→D_min over T) | BLEU [95% CI]"
        " | ROUGE-L [95% CI] | tokens/s | mean tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in results["models"]:
        for row in model["rows"]:
            bleu_low, bleu_high = row["bleu_ci"]
            rouge_low, rouge_high = row["rouge_l_ci"]
            lines.append(
                f"| {model['label']} | {row['target_speedup']:g}x"
                f" | {row['mean_theoretical_speedup']:.2f}x | {_schedule_text(row['schedule'])}"
                f" | {row['bleu']:.1f} [{bleu_low:.1f}, {bleu_high:.1f}]"
                f" | {row['rouge_l']:.1f} [{rouge_low:.1f}, {rouge_high:.1f}]"
                f" | {row['tokens_per_s']:.0f} | {row['mean_generated_tokens']:.1f} |"
            )
    return "\n".join(lines) + "\n" + group_tables(results)


def _rules(config: dict[str, Any]) -> str:
    rules = f"{config['split_rule']}, val_percent={config['val_percent']}"
    if config.get("split_by") == "name":
        rules += f"; {config['name_split_rule']}, name_val_percent={config['name_val_percent']}"
    return rules


def _bar(length: float) -> float:
    return length if length > 0 else 0.0  # also maps NaN (no bootstrap) to 0


def plot(results: dict[str, Any], path: str | Path) -> None:
    """BLEU and ROUGE-L against mean theoretical speedup, one line per model, with CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for metric, axis, title in (("bleu", axes[0], "BLEU"), ("rouge_l", axes[1], "ROUGE-L F")):
        for model in results["models"]:
            rows = model["rows"]
            xs = [row["mean_theoretical_speedup"] for row in rows]
            ys = [row[metric] for row in rows]
            # A percentile interval of BLEU need not contain the point estimate: clamp at 0.
            errors = [
                [_bar(y - row[f"{metric}_ci"][0]) for y, row in zip(ys, rows)],
                [_bar(row[f"{metric}_ci"][1] - y) for y, row in zip(ys, rows)],
            ]
            axis.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=model["label"])
        axis.set_xlabel("mean theoretical speedup (x)")
        axis.set_ylabel(title)
        axis.set_title(f"E2E {title} vs speedup")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.savefig(path, dpi=120)
    plt.close(figure)
