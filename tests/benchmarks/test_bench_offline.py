"""Smoke tests of the offline bench commands on the tiny model: JSON fields and consistency."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from skipdecode.cli import main

NUM_LAYERS = 8  # tests/tiny_models.py


def run_cli(*argv: str) -> dict:
    out = argv[argv.index("--output-json") + 1]
    assert main(list(argv)) == 0
    with open(out) as f:
        return json.load(f)


def test_throughput(tiny_llama_dir, tmp_path):
    payload = run_cli(
        "bench", "throughput", "--model", str(tiny_llama_dir), "--dtype", "float32",
        "--num-prompts", "3", "--input-len", "8", "--output-len", "10", "--speedups", "2",
        "--output-json", str(tmp_path / "throughput.json"),
    )  # fmt: skip
    assert payload["benchmark"] == "throughput" and payload["num_layers"] == NUM_LAYERS
    full, skip = payload["results"]
    assert (full["label"], skip["label"]) == ("1x", "2x")  # 1x is always measured first
    for row in (full, skip):
        assert row["num_output_tokens"] == row["num_output_tokens_expected"] == 3 * 10
        assert row["num_prompt_tokens"] == 3 * 8
        assert row["requests_per_s"] * row["elapsed_s"] == pytest.approx(3)
        assert row["total_tokens_per_s"] > row["output_tokens_per_s"] > 0
        assert row["num_preemptions"] == 0
    assert full["measured_gain"] == 1.0
    assert full["theoretical_speedup"] == full["flop_ideal_gain"] == 1.0
    assert full["mean_depth"] == NUM_LAYERS
    assert skip["theoretical_speedup"] == pytest.approx(NUM_LAYERS / skip["mean_depth"])
    # The LM head is never skipped, and prefill never is: the ideal gains trail the theory.
    assert 1.0 < skip["flop_ideal_gain_e2e"] < skip["flop_ideal_gain"]
    assert skip["flop_ideal_gain"] < skip["theoretical_speedup"]


def test_latency_with_breakdown_and_matmul(tiny_llama_dir, tmp_path):
    payload = run_cli(
        "bench", "latency", "--model", str(tiny_llama_dir), "--dtype", "float32",
        "--batch-size", "1,3", "--context-len", "8,20", "--num-steps", "3",
        "--speedups", "2", "--profile-steps", "2", "--peak-batch", "3", "--matmul-seconds", "0.02",
        "--output-json", str(tmp_path / "latency.json"),
    )  # fmt: skip
    rows = payload["results"]
    points = {(r["batch_size"], r["context_len"], r["label"]) for r in rows}
    assert points == {(b, c, s) for b in (1, 3) for c in (8, 20) for s in ("1x", "2x")}
    assert payload["complete"] is True  # partial files (written after each point) say False
    for row in rows:
        assert 0 < row["step_ms_p50"] <= row["step_ms_p90"]
        assert row["tokens_per_s"] == pytest.approx(row["batch_size"] / row["step_ms_mean"] * 1e3)
        assert row["achieved_gflops"] > 0
        expected_depth = NUM_LAYERS if row["label"] == "1x" else None
        if expected_depth:
            assert row["mean_depth"] == expected_depth
        else:
            assert row["mean_depth"] < NUM_LAYERS
    host = {(r["batch_size"], r["context_len"], r["label"]): r for r in payload["host"]}
    assert set(host) == {(b, 8, s) for b in (1, 3) for s in ("1x", "2x")}
    assert all(r["host_ms_p50"] > 0 and r["host_ms_mean"] > 0 for r in host.values())
    # The model came back after the stubbed run: the profiled steps below run its layers.
    breakdown = payload["breakdown"]
    assert (breakdown["batch_size"], breakdown["context_len"]) == (3, 8)
    parts = {c["component"]: c["ms_per_step"] for c in breakdown["components"]}
    for name in ("embedding", "attention", "mlp", "norms", "lm_head", "sampling", "schedule"):
        assert parts[name] > 0, name
    step = parts.pop("step (profiled)")
    other = parts.pop("other")
    # The labelled ranges never nest in one another, so together they fit inside the step.
    assert sum(parts.values()) <= step
    assert other == pytest.approx(step - sum(parts.values()))
    matmul = payload["matmul"]
    counts = {s["name"]: s["count"] for s in matmul["shapes"]}
    assert counts == {
        "q_proj": NUM_LAYERS, "k_proj": NUM_LAYERS, "v_proj": NUM_LAYERS, "o_proj": NUM_LAYERS,
        "gate_proj": NUM_LAYERS, "up_proj": NUM_LAYERS, "down_proj": NUM_LAYERS, "lm_head": 1,
    }  # fmt: skip
    assert matmul["best_shape_gflops"] >= max(s["gflops"] for s in matmul["shapes"]) > 0
    assert matmul["decode_fraction_of_matmul"] > 0


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_latency_of_a_quantized_model_counts_its_quantized_matmuls(tiny_llama_dir, tmp_path, mode):
    """The matmul peak covers the quantized linears (the fused q/k/v and gate/up included)."""
    payload = run_cli(
        "bench", "latency", "--model", str(tiny_llama_dir), "--dtype", "float32",
        "--quantization", mode, "--batch-size", "2", "--context-len", "8", "--num-steps", "2",
        "--speedups", "1", "--no-profile", "--peak-batch", "2", "--matmul-seconds", "0.01",
        "--output-json", str(tmp_path / "latency.json"),
    )  # fmt: skip
    counts = {s["name"]: s["count"] for s in payload["matmul"]["shapes"]}
    # Every layer's projections once per layer, the LM head once: 2 fused + o + down.
    assert sum(counts.values()) == 4 * NUM_LAYERS + 1
    assert counts["lm_head"] == 1
    assert payload["matmul"]["model_mix_gflops"] > 0


def test_latency_keeps_the_points_measured_before_a_failure(tiny_llama_dir, tmp_path, monkeypatch):
    """The JSON is rewritten after every point, so a run cut short still leaves its data."""
    from skipdecode.benchmarks import latency

    calls = []
    measure = latency.measure_decode

    def measure_then_fail(*args, **kwargs):
        calls.append(args)
        if len(calls) == 3:  # warm-up, first point, then stop at the second
            raise KeyboardInterrupt
        return measure(*args, **kwargs)

    monkeypatch.setattr(latency, "measure_decode", measure_then_fail)
    out = tmp_path / "latency.json"
    with pytest.raises(KeyboardInterrupt):
        main(
            ["bench", "latency", "--model", str(tiny_llama_dir), "--dtype", "float32",
             "--batch-size", "2", "--context-len", "8,20", "--num-steps", "2",
             "--output-json", str(out)]
        )  # fmt: skip
    payload = json.loads(out.read_text())
    assert payload["complete"] is False
    assert [(r["context_len"], r["label"]) for r in payload["results"]] == [(8, "1x")]


def tiny_engine(model_dir):
    """An engine on the tiny model, built from bench flags as the bench commands build it."""
    from argparse import Namespace

    from skipdecode.benchmarks.engine_args import build_engine

    args = Namespace(
        model=str(model_dir), dtype="float32", device="cpu", max_num_seqs=4,
        max_num_batched_tokens=64, block_size=4, kv_cache_memory=0.01,
    )  # fmt: skip
    return build_engine(args)


def test_stubbed_model_leaves_only_host_work_then_comes_back(tiny_llama_dir):
    from skipdecode.benchmarks.step_profile import model_stubbed
    from skipdecode.scheduler import SamplingParams

    engine = tiny_engine(tiny_llama_dir)
    model = engine.runner.model
    params = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
    ids = itertools.count()

    def generate() -> list[int]:
        engine.add_request([5, 6, 7], params, request_id=f"r{next(ids)}")
        while engine.has_unfinished_requests():
            outputs = engine.step()
        return outputs[0].token_ids

    with model_stubbed(engine):
        assert torch.count_nonzero(model(torch.tensor([1, 2]), None)) == 0
        stubbed = generate()
        # Fixed logits every step: greedy repeats their argmax.
        assert stubbed == [int(model.compute_logits(torch.zeros(1, 1)).argmax())] * 5
    assert "forward" not in vars(model) and "compute_logits" not in vars(model)
    assert generate() != stubbed  # the real model again


def test_profiling_leaves_no_labels_behind(tiny_llama_dir):
    from skipdecode.benchmarks.step_profile import labelled
    from skipdecode.model_runner import ops
    from skipdecode.model_runner import runner as runner_module

    engine = tiny_engine(tiny_llama_dir)
    original_context, original_sampler = runner_module.build_step_context, engine.runner.sampler
    original_norms = ops.rms_norm, ops.add_rms_norm
    with labelled(engine):
        assert engine.runner.model.lm_head._forward_pre_hooks
        assert "schedule" in vars(engine.scheduler)
        assert ops.rms_norm is not original_norms[0]
    assert (ops.rms_norm, ops.add_rms_norm) == original_norms
    assert runner_module.build_step_context is original_context
    assert engine.runner.sampler is original_sampler
    assert "schedule" not in vars(engine.scheduler) and "update" not in vars(engine.scheduler)
    for module in engine.runner.model.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks


def test_hf_generate(tiny_llama_dir, tmp_path):
    payload = run_cli(
        "bench", "hf", "--model", str(tiny_llama_dir), "--dtype", "float32",
        "--num-prompts", "3", "--batch-size", "2", "--input-len", "6", "--output-len", "5",
        "--output-json", str(tmp_path / "hf.json"),
    )  # fmt: skip
    (row,) = payload["results"]
    assert row["num_output_tokens"] == row["num_output_tokens_expected"] == 3 * 5
    assert row["total_tokens_per_s"] > row["output_tokens_per_s"] > 0
    assert row["dtype"] == "float32"


def test_structured_cost(tiny_llama_dir, tmp_path):
    payload = run_cli(
        "bench", "structured", "--model", str(tiny_llama_dir), "--dtype", "float32",
        "--num-prompts", "3", "--input-len", "8", "--output-len", "12", "--repeats", "2",
        "--speedups", "1,2", "--output-json", str(tmp_path / "structured.json"),
    )  # fmt: skip
    assert payload["benchmark"] == "structured"
    assert [row["label"] for row in payload["results"]] == ["1x", "2x"]
    for row in payload["results"]:
        assert len(row["runs"]["free"]) == len(row["runs"]["constrained"]) == 2
        assert row["ratio"] == pytest.approx(
            row["constrained_tokens_per_s"] / row["free_tokens_per_s"]
        )
        assert row["num_requests"] == 3
