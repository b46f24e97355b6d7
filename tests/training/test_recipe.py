"""The E2E recipe script runs every stage on the tiny model, and skips finished stages."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[2] / "training" / "recipe_e2e.sh"


def test_recipe_runs_all_stages_then_skips_them(tiny_llama_dir, e2e_csv, tmp_path):
    env = {
        **os.environ,
        "BASE": str(tiny_llama_dir),
        "DATA": str(e2e_csv),  # 15%: MR "Beta" is validation, "Alpha" and "Gamma" train
        "MAX_STEPS": "2",
        "BATCH": "2",
        "SPEEDUPS_TRAIN": "1,2",
        "SPEEDUPS_EVAL": "1,2",
        "MAX_TOKENS": "8",
        "DEVICE": "cpu",
    }
    out = tmp_path / "recipe"
    first = subprocess.run(
        ["bash", str(RECIPE), str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((out / "eval" / "results.json").read_text())
    assert [m["label"] for m in results["models"]] == [
        "(a) base",
        "(b) full-depth FT",
        "(c) skip-aware FT",
    ]
    assert results["config"]["num_mrs"] == 1
    assert all(len(m["rows"]) == 2 for m in results["models"])
    skip_record = json.loads((out / "skip" / "skip_schedule.json").read_text())
    assert [s["speedup"] for s in skip_record["schedules"]] == [1.0, 2.0]
    summary = json.loads((out / "skip" / "train_summary.json").read_text())
    assert summary["config"]["teacher"] == str(out / "full") and summary["steps"] == 2
    again = subprocess.run(
        ["bash", str(RECIPE), str(out)], env=env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skipping") == 3
