"""``skipdecode train`` and ``skipdecode eval e2e`` end to end on the tiny model."""

from __future__ import annotations

import json

import pytest
from tiny_models import NUM_LAYERS

from skipdecode import LLM, SamplingParams
from skipdecode.cli import build_parser, main
from skipdecode.training.e2e import SPLIT_RULE
from skipdecode.training.evaluate import EvalConfig, ModelSpec, evaluate


def test_parsers_accept_the_documented_flags():
    args = build_parser().parse_args(
        ["train", "--out", "x", "--method", "lora", "--speedups", "1,2,3", "--kl-weight", "1"]
    )
    assert (args.method, args.speedups, args.kl_weight) == ("lora", (1.0, 2.0, 3.0), 1.0)
    args = build_parser().parse_args(
        ["eval", "e2e", "--model", "a", "--model", "b", "--label", "A", "--label", "B"]
        + ["--out", "o", "--speedups", "1,5"]
    )
    assert (args.model, args.label, args.speedups) == (["a", "b"], ["A", "B"], (1.0, 5.0))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--out", "x", "--speedups", "0.5"])


def test_train_two_steps_writes_a_servable_checkpoint(tiny_llama_dir, e2e_csv, tmp_path, capsys):
    out = tmp_path / "ckpt"
    argv = ["train", "--model", str(tiny_llama_dir), "--out", str(out), "--data", str(e2e_csv)]
    argv += ["--val-percent", "0", "--max-steps", "2", "--batch-size", "2", "--method", "lora"]
    argv += ["--speedups", "1,2", "--decay-tokens", "6", "--dtype", "fp32"]
    assert main(argv) == 0
    record = json.loads((out / "skip_schedule.json").read_text())
    assert record["default"]["speedup"] == 2.0 and record["default"]["decay_tokens"] == 6
    assert [s["speedup"] for s in record["schedules"]] == [1.0, 2.0]
    assert record["data"]["split_rule"] == SPLIT_RULE
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["tokens"] > 0
    assert not (out / "resume").exists()  # a finished run keeps no optimizer state
    # The merged checkpoint loads in the engine, which serves the 2x schedule by default.
    llm = LLM(str(out), dtype="float32", num_kv_blocks=64, block_size=4)
    schedule = llm.engine.resolve_skip(None)
    out_ids = llm.generate([5, 6, 7], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    assert out_ids[0].depths == [schedule.depth(g) for g in range(8)]
    assert min(out_ids[0].depths) < NUM_LAYERS
    assert main(argv + ["--resume"]) == 0  # a finished run is skipped, not redone
    # ...but not when the settings differ: that would report one run under another's name.
    with pytest.raises(SystemExit):
        main([*argv[:-6], "--speedups", "1,3", *argv[-4:], "--resume"])
    assert "other settings (speedups: [1.0, 2.0] -> [1.0, 3.0])" in capsys.readouterr().err


def test_eval_writes_table_json_and_plot(tiny_llama_dir, e2e_csv, tmp_path):
    config = EvalConfig(
        models=(ModelSpec("tiny", str(tiny_llama_dir)),),
        out_dir=str(tmp_path / "eval"),
        data=str(e2e_csv),
        split="all",
        speedups=(1.0, 2.0),
        decay_tokens=4,
        max_tokens=6,
        num_resamples=20,
    )
    results = evaluate(config, log=lambda _: None)
    rows = results["models"][0]["rows"]
    assert [r["target_speedup"] for r in rows] == [1.0, 2.0]
    assert rows[0]["mean_theoretical_speedup"] == 1.0
    assert rows[1]["mean_theoretical_speedup"] > 1.3
    assert all(r["tokens_per_s"] > 0 and 0 <= r["bleu"] <= 100 for r in rows)
    out = tmp_path / "eval"
    config = json.loads((out / "results.json").read_text())["config"]
    assert config["num_mrs"] == 3
    assert config["group_sizes"] == {"all": 3, "seen": 3, "unseen": 0, "fresh": 3}
    assert all(set(r["groups"]) == {"seen", "fresh"} for r in rows)
    assert all(0 <= r["ser"] <= 100 for r in rows)
    table = (out / "results.md").read_text()
    assert table.count("| tiny |") == 2 * 3  # the main table, then the seen and fresh tables
    assert "**fresh names" in table and "unseen names" not in table
    assert (out / "quality_vs_speedup.png").read_bytes()[:4] == b"\x89PNG"
    assert len((out / "generations.jsonl").read_text().splitlines()) == 2 * (3 + 3)
