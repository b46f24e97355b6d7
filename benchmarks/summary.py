"""A side-by-side Markdown table of a results folder (``bench serve`` runs and ``bench hf``).

python -m skipdecode.benchmarks.summary RESULTS_DIR     # prints it, writes summary.md
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from skipdecode.benchmarks.plots import load_results

HEADERS = (
    "system",
    "run",
    "out tok/s",
    "req/s",
    "TTFT p50 ms",
    "ITL p50 ms",
    "E2E p50 ms",
    "errors",
    "theoretical speedup",
)


def _num(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def summary_rows(results: dict[str, list[dict]]) -> list[list[str]]:
    """One row per serve run (each system, each concurrency or rate) and per HF batch size."""
    rows = []
    for payload in results.get("serve", []):
        for r in payload["results"]:
            rows.append(
                [
                    payload["system"],
                    r["label"],
                    _num(r["output_tokens_per_s"], ".1f"),
                    _num(r["requests_per_s"], ".2f"),
                    _num(r["ttft_ms_p50"], ".1f"),
                    _num(r["itl_ms_p50"], ".2f"),
                    _num(r["e2e_ms_p50"], ".0f"),
                    str(r["num_errors"]),
                    _num(r.get("theoretical_speedup"), ".2f"),
                ]
            )
    for payload in results.get("hf", []):
        for r in payload["results"]:
            rows.append(
                [
                    f"HF transformers generate ({r['dtype']})",
                    f"batch={r['batch_size']}",
                    _num(r["output_tokens_per_s"], ".1f"),
                    _num(r["requests_per_s"], ".2f"),
                    "-",
                    "-",
                    "-",
                    "0",
                    "1.00",
                ]
            )
    return rows


def markdown_table(rows: list[list[str]], headers: tuple[str, ...] = HEADERS) -> str:
    """Rows under ``headers``, as a Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def _serve_rate(results: dict, system_prefix: str, concurrency: int) -> float | None:
    for payload in results.get("serve", []):
        if payload["system"].startswith(system_prefix):
            for r in payload["results"]:
                if r["concurrency"] == concurrency and r["num_errors"] == 0:
                    return r["output_tokens_per_s"]
    return None


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def target_rows(results: dict[str, list[dict]], streams: int = 16) -> list[list[str]]:
    """Issue #5's targets, each as (target, measured ratio, goal, met?), from what is present."""
    rows: list[tuple[str, float | None, float]] = []
    ours = {s: _serve_rate(results, f"skipdecode {s}x", streams) for s in (1, 2)}
    hf = next(
        (
            r["output_tokens_per_s"]
            for p in results.get("hf", [])
            for r in p["results"]
            if r["batch_size"] == streams
        ),
        None,
    )
    llama = _serve_rate(results, "llama.cpp", streams)
    rows.append((f"{streams} streams, 1x / HF generate", _ratio(ours[1], hf), 3.0))
    rows.append((f"{streams} streams, 2x / HF generate", _ratio(ours[2], hf), 5.0))
    rows.append((f"{streams} streams, 1x / llama.cpp", _ratio(ours[1], llama), 2.0))
    rows.append((f"{streams} streams, 2x / llama.cpp", _ratio(ours[2], llama), 3.0))
    for payload in results.get("throughput", []):
        by_target = {r["target_speedup"]: r for r in payload["results"]}
        base = by_target.get(1.0)
        for target in (2.0, 3.0):
            row = by_target.get(target)
            if base and row and row["flop_ideal_gain"]:
                gain = row["output_tokens_per_s"] / base["output_tokens_per_s"]
                label = f"skip efficiency at {target:g}x (gain / FLOP-ideal)"
                rows.append((label, gain / row["flop_ideal_gain"], 0.9))
    for payload in results.get("latency", []):
        rows.extend(_decode_efficiency_rows(payload.get("results", [])))
        fraction = payload.get("matmul", {}).get("decode_fraction_of_matmul")
        if fraction is not None:
            rows.append(("decode step at full depth / matmul peak", fraction, 0.5))
    for payload in results.get("kv", []):
        fits = {r["target_speedup"]: r["max_concurrent_seqs"] for r in payload["results"]}
        rows.append(
            ("sequences in the KV budget, 3x / 1x", _ratio(fits.get(3.0), fits.get(1.0)), 2.0)
        )
    return [
        [
            name,
            _num(value, ".2f"),
            f">= {goal:g}",
            "-" if value is None else ("yes" if value >= goal else "no"),
        ]
        for name, value, goal in rows
    ]


def _decode_efficiency_rows(points: list[dict]) -> list[tuple[str, float, float]]:
    """Skip efficiency of decode steps alone (``bench latency --speedups``): the step-time gain
    over 1x at the same batch and context, divided by the FLOP-ideal gain, which is the ratio of
    achieved GFLOP/s (FLOPs counted at each token's depth)."""
    by_point = {(r["batch_size"], r["context_len"], r["target_speedup"]): r for r in points}
    rows = []
    for (batch, context, target), row in sorted(by_point.items()):
        base = by_point.get((batch, context, 1.0))
        if target in (2.0, 3.0) and base and base["achieved_gflops"]:
            label = f"decode skip efficiency at {target:g}x, batch {batch}, context {context}"
            rows.append((label, row["achieved_gflops"] / base["achieved_gflops"], 0.9))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Entry point: print the table and write RESULTS_DIR/summary.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", type=Path, help="folder with the bench JSON files")
    args = parser.parse_args(argv)
    results = load_results(args.results_dir)
    table = markdown_table(summary_rows(results))
    table += "\n\nTargets:\n\n" + markdown_table(
        target_rows(results), ("target", "measured", "goal", "met")
    )
    (args.results_dir / "summary.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
