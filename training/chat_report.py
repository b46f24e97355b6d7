"""Reports of ``skipdecode eval chat``: JSON, a markdown table, a plot and side-by-side answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from skipdecode.training.report import _bar, _schedule_text, plot_if_available

SIDE_BY_SIDE_SPEEDUPS = {"base": (1.0, 2.0), "other": (1.0, 2.0, 3.0)}
NUM_SIDE_BY_SIDE = 10


def write_chat_reports(
    results: dict[str, Any], rows: dict, out_dir: str | Path, log: Callable[[str], None] = print
) -> None:
    """``results.json``, ``results.md``, ``quality_vs_speedup.png`` (where matplotlib is
    installed), ``side_by_side.md``."""
    out_dir = Path(out_dir)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "results.md").write_text(markdown_table(results))
    (out_dir / "side_by_side.md").write_text(side_by_side(results, rows))
    plot_if_available(plot, results, out_dir / "quality_vs_speedup.png", log)


def _ci(value: float, interval: list[float], digits: int = 1) -> str:
    low, high = interval
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def markdown_table(results: dict[str, Any]) -> str:
    """One row per (model, target speedup)."""
    config = results["config"]
    record = config["data_record"]
    lines = [
        f"Chat {config['split']} split of {record['file']} ({record['num_prompts']} conversations,"
        f" first user turn, prompts <= {config['max_prompt_tokens']} tokens); greedy;"
        f" perplexity of the data's answers (first {config['max_answer_tokens']} tokens),"
        f" generation up to {config['max_tokens']} tokens; agreement against"
        f" {results['reference_model']} at 1x; 95% bootstrap intervals over conversations.",
        "",
        "| model | target | mean theoretical speedup | depths | perplexity [95% CI]"
        " | ROUGE-L vs reference | first differing token | repeated 4-grams % | tokens/s"
        " | mean tokens |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in results["models"]:
        for row in model["rows"]:
            lines.append(
                f"| {model['label']} | {row['target_speedup']:g}x"
                f" | {row['mean_theoretical_speedup']:.2f}x | {_schedule_text(row['schedule'])}"
                f" | {_ci(row['perplexity'], row['perplexity_ci'], 2)}"
                f" | {_ci(row['rouge_l_vs_reference'], row['rouge_l_ci'])}"
                f" | {_ci(row['first_difference'], row['first_difference_ci'])}"
                f" | {_ci(row['repeated_4grams_percent'], row['repeated_4grams_ci'])}"
                f" | {row['tokens_per_s']:.0f} | {row['mean_generated_tokens']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def side_by_side(results: dict[str, Any], rows: dict) -> str:
    """The first prompts with each model's answers: the reference model at 1x/2x, the others
    at 1x/2x/3x (where evaluated)."""
    labels = [m["label"] for m in results["models"]]
    lines = ["# Side by side: greedy answers to held-out prompts", ""]
    for index, prompt in enumerate(results["prompts"][:NUM_SIDE_BY_SIDE]):
        user = [m["content"] for m in prompt["messages"] if m["role"] == "user"][-1]
        lines += [f"## {index + 1}. `{prompt['id']}`", "", "> " + user.replace("\n", "\n> "), ""]
        for position, label in enumerate(labels):
            kind = "base" if position == 0 else "other"
            for speedup in SIDE_BY_SIDE_SPEEDUPS[kind]:
                row = rows.get((label, speedup))
                if row is None:
                    continue
                text = row["texts"][index].strip().replace("\n", " ")
                lines += [f"**{label}, {speedup:g}x**: {text}", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: str | Path) -> None:
    """Perplexity and ROUGE-L (vs the reference) against the mean theoretical speedup."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = (
        ("perplexity", "perplexity_ci", "perplexity of held-out answers (log)"),
        ("rouge_l_vs_reference", "rouge_l_ci", "ROUGE-L vs reference model at 1x"),
    )
    for axis, (key, ci_key, title) in zip(axes, panels):
        for model in results["models"]:
            xs = [r["mean_theoretical_speedup"] for r in model["rows"]]
            ys = [r[key] for r in model["rows"]]
            low = [_bar(y - r[ci_key][0]) for y, r in zip(ys, model["rows"])]
            high = [_bar(r[ci_key][1] - y) for y, r in zip(ys, model["rows"])]
            axis.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3, label=model["label"])
        axis.set_xlabel("mean theoretical speedup")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
