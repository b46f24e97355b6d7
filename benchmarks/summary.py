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


def markdown_table(rows: list[list[str]]) -> str:
    """Rows under the summary headers, as a Markdown table."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point: print the table and write RESULTS_DIR/summary.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", type=Path, help="folder with the bench JSON files")
    args = parser.parse_args(argv)
    table = markdown_table(summary_rows(load_results(args.results_dir)))
    (args.results_dir / "summary.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
