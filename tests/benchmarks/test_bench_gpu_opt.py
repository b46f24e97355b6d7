"""Smoke tests of ``bench gpu`` on CPU with the tiny OPT preset: JSON fields and consistency."""

from __future__ import annotations

import json

import pytest
import torch

from skipdecode.benchmarks.opt_presets import TINY_SHAPE, estimated_params, opt_config
from skipdecode.cli import main

NUM_LAYERS = TINY_SHAPE[1]
BATCHES = (1, 2)
INPUT_LEN, OUTPUT_LEN = 8, 32  # OUTPUT_LEN = the presets' decay_tokens: they land on target


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the tiny model is faster so, and a busy machine hurts it less."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_cli(tmp_path, *extra: str) -> dict:
    out = tmp_path / "gpu.json"
    argv = [
        "bench", "gpu", "--model-preset", "tiny", "--dtype", "float32", "--device", "cpu",
        "--batch-size", ",".join(map(str, BATCHES)), "--input-len", str(INPUT_LEN),
        "--output-len", str(OUTPUT_LEN), "--speedups", "2,5", "--output-json", str(out), *extra,
    ]  # fmt: skip
    assert main(argv) == 0
    return json.loads(out.read_text())


def test_tiny_preset_on_cpu(tmp_path):
    payload = run_cli(tmp_path)
    assert payload["benchmark"] == "gpu_opt"
    assert payload["machine"]["cpu_count"] >= 1 and "torch" in payload["machine"]
    assert payload["args"]["model_preset"] == ["tiny"]
    assert not payload["stopped_early"] and payload["skipped"] == []
    model = payload["models"]["tiny"]
    assert (model["num_layers"], model["hidden_size"], model["device"]) == (NUM_LAYERS, 64, "cpu")
    rows = payload["results"]
    points = [(r["batch_size"], r["label"]) for r in rows]
    assert points == [(b, s) for b in BATCHES for s in ("1x", "2x", "5x")]  # 1x first
    for row in rows:
        batch = row["batch_size"]
        assert row["num_output_tokens"] == row["num_output_tokens_expected"] == batch * OUTPUT_LEN
        assert row["num_prompt_tokens"] == batch * INPUT_LEN
        # One prefill step samples each sequence's first token; every other token is decoded.
        assert row["num_decode_tokens"] == batch * (OUTPUT_LEN - 1)
        assert row["num_decode_steps"] == OUTPUT_LEN - 1
        assert row["decode_tokens_per_s"] > 0 and row["output_tokens_per_s"] > 0
        assert row["decode_s"] < row["elapsed_s"]
        assert row["theoretical_speedup"] == pytest.approx(row["schedule_speedup"])
        assert row["num_preemptions"] == 0
    for batch in BATCHES:
        full, double, fivefold = (r for r in rows if r["batch_size"] == batch)
        assert full["measured_gain"] == 1.0 and full["schedule"] == f"{NUM_LAYERS}->{NUM_LAYERS}"
        assert full["decode_mean_depth"] == NUM_LAYERS
        speedups = [r["schedule_speedup"] for r in (full, double, fivefold)]
        assert speedups[0] == 1.0 and speedups == sorted(speedups) and len(set(speedups)) == 3
        # Presets land within 5% of their target at N = decay_tokens.
        assert double["schedule_speedup"] == pytest.approx(2.0, rel=0.05)
        assert fivefold["schedule_speedup"] == pytest.approx(5.0, rel=0.05)
        assert fivefold["decode_mean_depth"] < double["decode_mean_depth"] < NUM_LAYERS


def test_time_budget_skips_and_reports(tmp_path):
    payload = run_cli(tmp_path, "--time-budget", "0")
    assert payload["stopped_early"] and payload["results"] == []
    skipped = {(s["model"], s["batch_size"], s["label"]) for s in payload["skipped"]}
    assert skipped == {("tiny", b, s) for b in BATCHES for s in ("1x", "2x", "5x")}


def test_paper_presets_have_published_shapes():
    small, large = opt_config("1.3b"), opt_config("6.7b")
    assert (small.hidden_size, small.num_hidden_layers, small.ffn_dim) == (2048, 24, 8192)
    assert (large.hidden_size, large.num_hidden_layers, large.ffn_dim) == (4096, 32, 16384)
    for config in (small, large):
        assert config.num_attention_heads == 32 and config.vocab_size == 50272
        assert config.word_embed_proj_dim == config.hidden_size
        assert config.do_layer_norm_before and config.activation_function == "relu"
    assert estimated_params("1.3b") == pytest.approx(1.316e9, rel=0.01)
    assert estimated_params("6.7b") == pytest.approx(6.658e9, rel=0.01)
    with pytest.raises(ValueError, match="unknown OPT preset"):
        opt_config("175b")
