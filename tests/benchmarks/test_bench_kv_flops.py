"""``bench kv`` (exact, no timing), the FLOP model, prompts, plots and the summary table."""

from __future__ import annotations

import json
import math

import pytest
import torch

from skipdecode.benchmarks.common import random_prompt_ids
from skipdecode.benchmarks.flops import ModelFlops, flop_ideal_gains
from skipdecode.cli import main
from skipdecode.scheduler import SkipConfig

NUM_LAYERS = 8  # tests/tiny_models.py
KV_HEADS, HEAD_DIM = 2, 16


def expected_blocks(schedule, prompt_len: int, num_generated: int, block_size: int) -> int:
    """Blocks per sequence counted from the depth function directly (not layer_num_tokens)."""
    fed = range(num_generated - 1)  # the last generated token is never fed back
    total = 0
    for layer in range(schedule.num_layers):
        runs = sum(schedule.runs_layer(schedule.depth(g), layer) for g in fed)
        total += math.ceil((prompt_len + runs) / block_size)
    return total


def test_kv_counts_match_the_schedule(tiny_llama_dir, tmp_path):
    out = tmp_path / "kv.json"
    argv = [
        "bench", "kv", "--model", str(tiny_llama_dir), "--dtype", "float32",
        "--budget-mib", "1", "--input-len", "10", "--output-len", "40", "--block-size", "4",
        "--speedups", "1.5,2", "--output-json", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    payload = json.loads(out.read_text())
    bytes_per_block = 2 * 4 * KV_HEADS * HEAD_DIM * 4  # keys + values, fp32
    assert payload["bytes_per_block"] == bytes_per_block
    assert payload["budget_blocks"] == (1 << 20) // bytes_per_block
    rows = payload["results"]
    assert [r["label"] for r in rows] == ["1x", "1.5x", "2x"]
    for row, speedup in zip(rows, (1.0, 1.5, 2.0)):
        schedule = SkipConfig.for_speedup(speedup).resolve(NUM_LAYERS)
        blocks = expected_blocks(schedule, 10, 40, 4)
        assert row["kv_blocks_per_seq"] == blocks
        assert row["kv_mib_per_seq"] == blocks * bytes_per_block / (1 << 20)
        assert row["max_concurrent_seqs"] == payload["budget_blocks"] // blocks
        assert row["theoretical_speedup"] == schedule.theoretical_speedup(40)
    assert rows[0]["kv_blocks_per_seq"] == NUM_LAYERS * math.ceil(49 / 4)
    assert rows[0]["kv_saving"] == 0 and rows[0]["capacity_gain"] == 1
    assert rows[2]["kv_saving"] > rows[1]["kv_saving"] > 0
    assert rows[2]["capacity_gain"] > 1


def test_flop_model_counts_the_real_matmul_weights():
    from tiny_models import tiny_hf_model

    for kind in ("llama", "opt"):
        hf = tiny_hf_model(kind)
        flops = ModelFlops.from_hf_config(hf.config)
        layer = hf.model.decoder.layers[0] if kind == "opt" else hf.model.layers[0]
        linears = [m for m in layer.modules() if isinstance(m, torch.nn.Linear)]
        assert flops.layer_matmul_params == sum(m.weight.numel() for m in linears), kind
        head = hf.lm_head.weight.numel()
        if kind == "opt":
            head += hf.model.decoder.project_out.weight.numel()
        assert flops.head_matmul_params == head, kind
        assert flops.num_layers == NUM_LAYERS


def test_flop_ideal_gain_by_hand():
    flops = ModelFlops(num_layers=4, layer_matmul_params=100, head_matmul_params=50,
                       attention_width=0)  # fmt: skip
    # Generated depths 4, 2, 2: only the first two tokens are fed back.
    # Full depth: 2 * (4 * 200 + 100) = 1800; skipped: (4 * 200 + 100) + (2 * 200 + 100) = 1400.
    decode, e2e = flop_ideal_gains(flops, prompt_len=3, depth_lists=[[4, 2, 2]])
    assert decode == pytest.approx(1800 / 1400)
    prefill = 3 * 4 * 200 + 100
    assert e2e == pytest.approx((1800 + prefill) / (1400 + prefill))
    assert flop_ideal_gains(flops, 3, [[4, 4, 4], [4, 4]]) == (1.0, 1.0)


def test_attention_flops_grow_with_context():
    flops = ModelFlops(num_layers=2, layer_matmul_params=10, head_matmul_params=0,
                       attention_width=8)  # fmt: skip
    assert flops.layer_flops(5) == 2 * 10 + 4 * 8 * 5


def test_random_prompts_are_seeded_exact_and_avoid_special_ids():
    a = random_prompt_ids(4, 50, vocab_size=30, avoid_ids={0, 1, 2}, seed=7)
    assert a == random_prompt_ids(4, 50, vocab_size=30, avoid_ids={0, 1, 2}, seed=7)
    assert a != random_prompt_ids(4, 50, vocab_size=30, avoid_ids={0, 1, 2}, seed=8)
    flat = [t for prompt in a for t in prompt]
    assert all(len(p) == 50 for p in a) and len(a) == 4
    assert min(flat) >= 3 and max(flat) < 30


def test_plots_and_summary(tiny_llama_dir, fake_server, tmp_path):
    from skipdecode.benchmarks.plots import make_plots
    from skipdecode.benchmarks.summary import main as summary_main

    common = ["--model", str(tiny_llama_dir), "--input-len", "8", "--output-len", "16"]
    assert main(["bench", "kv", *common, "--speedups", "2", "--budget-mib", "0.5",
                 "--output-json", str(tmp_path / "kv.json")]) == 0  # fmt: skip
    url, _ = fake_server()
    assert main(["bench", "serve", "--base-url", url, *common, "--num-prompts", "2",
                 "--concurrency", "1,2", "--label", "fake",
                 "--output-json", str(tmp_path / "serve.json")]) == 0  # fmt: skip
    paths = make_plots(tmp_path)
    assert sorted(p.name for p in paths) == [
        "kv_capacity.png", "kv_memory.png", "serve_throughput.png"
    ]  # fmt: skip
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary_main([str(tmp_path)]) == 0
    side_by_side, targets = (tmp_path / "summary.md").read_text().split("Targets:")
    table = side_by_side.strip().splitlines()
    assert len(table) == 2 + 2 and table[2].startswith("| fake | c=1 |")
    # Only the KV target has its inputs here: 1x vs 3x was not asked for, so it shows "-".
    assert "| sequences in the KV budget, 3x / 1x | - | >= 2 | - |" in targets


def test_target_ratios_from_hand_made_results():
    from skipdecode.benchmarks.summary import target_rows

    def serve(system, rate):
        row = {"concurrency": 16, "num_errors": 0, "output_tokens_per_s": rate}
        return {"system": system, "results": [row]}

    results = {
        "serve": [serve("skipdecode 1x", 600.0), serve("skipdecode 2x", 900.0),
                  serve("llama.cpp (16 slots)", 250.0)],
        "hf": [{"results": [{"batch_size": 16, "output_tokens_per_s": 150.0}]}],
        "throughput": [{"results": [
            {"target_speedup": 1.0, "output_tokens_per_s": 100.0, "flop_ideal_gain": 1.0},
            {"target_speedup": 2.0, "output_tokens_per_s": 180.0, "flop_ideal_gain": 1.8},
            {"target_speedup": 3.0, "output_tokens_per_s": 200.0, "flop_ideal_gain": 2.5},
        ]}],
        "latency": [{"matmul": {"decode_fraction_of_matmul": 0.45}, "results": [
            {"batch_size": 64, "context_len": 128, "target_speedup": 1.0, "achieved_gflops": 100.0},
            {"batch_size": 64, "context_len": 128, "target_speedup": 2.0, "achieved_gflops": 95.0},
            {"batch_size": 64, "context_len": 128, "target_speedup": 3.0, "achieved_gflops": 80.0},
            {"batch_size": 16, "context_len": 128, "target_speedup": 1.0, "achieved_gflops": 50.0},
        ]}],
        "kv": [{"results": [{"target_speedup": 1.0, "max_concurrent_seqs": 4},
                            {"target_speedup": 3.0, "max_concurrent_seqs": 10}]}],
    }  # fmt: skip
    rows = {name: (measured, met) for name, measured, _, met in target_rows(results)}
    assert rows["16 streams, 1x / HF generate"] == ("4.00", "yes")  # 600 / 150
    assert rows["16 streams, 2x / HF generate"] == ("6.00", "yes")  # 900 / 150
    assert rows["16 streams, 1x / llama.cpp"] == ("2.40", "yes")  # 600 / 250
    assert rows["16 streams, 2x / llama.cpp"] == ("3.60", "yes")  # 900 / 250
    assert rows["skip efficiency at 2x (gain / FLOP-ideal)"] == ("1.00", "yes")  # 1.8 / 1.8
    assert rows["skip efficiency at 3x (gain / FLOP-ideal)"] == ("0.80", "no")  # 2.0 / 2.5
    assert rows["decode step at full depth / matmul peak"] == ("0.45", "no")
    # Decode steps alone: step gain / FLOP-ideal gain = achieved GFLOP/s at kx / at 1x.
    assert rows["decode skip efficiency at 2x, batch 64, context 128"] == ("0.95", "yes")
    assert rows["decode skip efficiency at 3x, batch 64, context 128"] == ("0.80", "no")
    assert not any("batch 16" in name for name in rows)  # no skip rows at batch 16
    assert rows["sequences in the KV budget, 3x / 1x"] == ("2.50", "yes")
