"""The guidellm report reader picks the figures from the fields guidellm 0.8 writes."""

from __future__ import annotations

import json

from skipdecode.benchmarks.guidellm_summary import format_table, load


def benchmark(kind: str, key: str, value: float, tok_s: float) -> dict:
    def dist(p50: float, p99: float, mean: float | None = None) -> dict:
        return {"successful": {"mean": mean, "percentiles": {"p50": p50, "p99": p99}}}

    return {
        "config": {"strategy": {"type_": kind, key: value}},
        "duration": 12.5,
        "metrics": {
            "request_totals": {"successful": 30, "errored": 2},
            "output_tokens_per_second": {"successful": {"mean": tok_s}},
            "time_to_first_token_ms": dist(80.0, 900.0),
            "inter_token_latency_ms": dist(40.0, 75.5),
            "request_latency": dist(5.25, 7.0),  # seconds in the report
        },
    }


def test_rows_carry_the_report_figures_in_ms(tmp_path):
    report = {"benchmarks": [benchmark("concurrent", "streams", 16, 250.0),
                             benchmark("poisson", "rate", 2.0, 120.0)]}  # fmt: skip
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    rows = load(path)
    assert [r["benchmark"] for r in rows] == ["concurrent@16", "poisson@2.0"]
    first = rows[0]
    assert (first["completed"], first["errored"]) == (30, 2)
    assert first["output_tokens_per_s"] == 250.0
    assert (first["ttft_p50_ms"], first["ttft_p99_ms"]) == (80.0, 900.0)
    assert (first["itl_p50_ms"], first["itl_p99_ms"]) == (40.0, 75.5)
    assert first["e2e_p50_ms"] == 5250.0
    assert "| concurrent@16 | 30 | 250.0 | 80.0 | 900.0 | 40.00 | 75.50 | 5250.0 |" in (
        format_table(rows)
    )


def test_missing_metrics_read_as_none(tmp_path):
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"benchmarks": [{"metrics": {}}]}))
    (row,) = load(path)
    assert row["completed"] == 0 and row["ttft_p50_ms"] is None
    assert "| ? | 0 | - |" in format_table([row])
