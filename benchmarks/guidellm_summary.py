"""Headline figures of a guidellm (0.8) JSON report, as written by benchmarks/guidellm.sh.

One row per benchmark in the report (one per concurrency or rate): requests completed, output
tokens/s (all completed output tokens over the benchmark's duration), TTFT and ITL p50/p99 ms,
E2E request latency p50 ms. Reads ``benchmarks[i].metrics.<metric>.successful`` of the report.

python -m skipdecode.benchmarks.guidellm_summary REPORT.json [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

COLUMNS = (
    ("benchmark", "benchmark", "s"),
    ("requests", "completed", "d"),
    ("out tok/s", "output_tokens_per_s", ".1f"),
    ("TTFT p50 ms", "ttft_p50_ms", ".1f"),
    ("TTFT p99 ms", "ttft_p99_ms", ".1f"),
    ("ITL p50 ms", "itl_p50_ms", ".2f"),
    ("ITL p99 ms", "itl_p99_ms", ".2f"),
    ("E2E p50 ms", "e2e_p50_ms", ".1f"),
)


def _successful(metrics: dict[str, Any], name: str) -> dict[str, Any]:
    """The distribution of ``name`` over completed requests ({} when absent)."""
    return (metrics.get(name) or {}).get("successful") or {}


def _percentile(metrics: dict[str, Any], name: str, pct: str, scale: float = 1.0) -> float | None:
    value = (_successful(metrics, name).get("percentiles") or {}).get(pct)
    return None if value is None else value * scale


def _label(benchmark: dict[str, Any]) -> str:
    strategy = (benchmark.get("config") or {}).get("strategy") or {}
    kind = strategy.get("type_", "?")
    for key in ("streams", "rate"):
        if strategy.get(key) is not None:
            return f"{kind}@{strategy[key]}"
    return str(kind)


def summarize(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per benchmark, keyed by the second item of each COLUMNS entry."""
    rows = []
    for benchmark in report.get("benchmarks", []):
        metrics = benchmark.get("metrics") or {}
        rows.append(
            {
                "benchmark": _label(benchmark),
                "completed": (metrics.get("request_totals") or {}).get("successful", 0),
                "errored": (metrics.get("request_totals") or {}).get("errored", 0),
                "output_tokens_per_s": _successful(metrics, "output_tokens_per_second").get("mean"),
                "ttft_p50_ms": _percentile(metrics, "time_to_first_token_ms", "p50"),
                "ttft_p99_ms": _percentile(metrics, "time_to_first_token_ms", "p99"),
                "itl_p50_ms": _percentile(metrics, "inter_token_latency_ms", "p50"),
                "itl_p99_ms": _percentile(metrics, "inter_token_latency_ms", "p99"),
                "e2e_p50_ms": _percentile(metrics, "request_latency", "p50", 1000.0),
                "duration_s": benchmark.get("duration"),
            }
        )
    return rows


def load(path: str | Path) -> list[dict[str, Any]]:
    """Read a guidellm JSON report and summarize it."""
    return summarize(json.loads(Path(path).read_text()))


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of summarize()'s rows ("-" for a missing figure)."""
    lines = [
        "| " + " | ".join(header for header, _, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = [("-" if row[key] is None else format(row[key], spec)) for _, key, spec in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="guidellm JSON report")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    rows = load(args.report)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return rows


if __name__ == "__main__":
    main()
