"""Markdown tables of ``eval e2e`` per MR group (seen, unseen and fresh names)."""

from __future__ import annotations

from typing import Any

GROUP_TITLES = {
    "unseen": "unseen names (no training MR has the name)",
    "fresh": "fresh names (validation MRs with invented name and near values)",
    "seen": "seen names (held-out MRs whose name occurs in training)",
}


def _interval(row: dict[str, Any], key: str, digits: int = 1) -> str:
    low, high = row[f"{key}_ci"]
    return f"{row[key]:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def group_tables(results: dict[str, Any]) -> str:
    """One table per group present in the results; empty when no row has groups."""
    present = [
        group
        for group in GROUP_TITLES
        if any(group in row.get("groups", {}) for m in results["models"] for row in m["rows"])
    ]
    lines: list[str] = []
    for group in present:
        sizes = results["config"].get("group_sizes", {})
        lines += [
            "",
            f"**{GROUP_TITLES[group]}**: {sizes.get(group, '?')} MRs",
            "",
            "| model | target | BLEU [95% CI] | ROUGE-L [95% CI] | SER % [95% CI]"
            " | name copied % [95% CI] |",
            "|---|---|---|---|---|---|",
        ]
        for model in results["models"]:
            for row in model["rows"]:
                scores = row.get("groups", {}).get(group)
                if scores is None:
                    continue
                lines.append(
                    f"| {model['label']} | {row['target_speedup']:g}x"
                    f" | {_interval(scores, 'bleu')} | {_interval(scores, 'rouge_l')}"
                    f" | {_interval(scores, 'ser')} | {_interval(scores, 'name_copied', 0)} |"
                )
    return "\n".join(lines) + ("\n" if lines else "")
