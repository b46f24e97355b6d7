"""``skipdecode bench latency``: decode step time vs batch size and context length.

For each (batch size, context length, speedup), ``batch`` requests with random prompts of
``context`` tokens are prefilled (untimed); then ``--num-steps`` decode steps, in which every
sequence feeds one token, are timed one by one. The decode window is generated tokens
``g = 0 .. num_steps-1``, so at a skip speedup the steps run the decaying depths ``D(g)``.

The same steps are then timed with the model's layers and LM head stubbed out, at the first
context length: what a step costs on the host alone (scheduling, metadata, sampling, update).

Then, for the largest batch at the first context length and full depth, a ``torch.profiler``
run splits the step's time between embedding, attention, MLP, norms, LM head, sampling,
scheduling and the rest, and ``torch.matmul`` at the model's own shapes (batch
``--peak-batch``) gives the matmul rate against which the step's achieved GFLOP/s is set.
"""

from __future__ import annotations

import argparse

import numpy as np

from skipdecode.benchmarks.common import format_table, parse_list, speedup_label, write_results
from skipdecode.benchmarks.engine_args import (
    add_engine_args,
    add_speedups_arg,
    build_engine,
    engine_prompts,
    model_config,
    skip_for,
)
from skipdecode.benchmarks.flops import ModelFlops
from skipdecode.benchmarks.kv import kv_blocks_per_sequence

COLUMNS = [
    ("batch_size", "batch", "d"),
    ("context_len", "context", "d"),
    ("label", "speedup", "s"),
    ("mean_depth", "mean depth", ".1f"),
    ("step_ms_mean", "step ms", ".2f"),
    ("step_ms_p50", "p50 ms", ".2f"),
    ("step_ms_p90", "p90 ms", ".2f"),
    ("tokens_per_s", "tok/s", ".1f"),
    ("achieved_gflops", "GFLOP/s", ".2f"),
]

HOST_COLUMNS = [
    ("batch_size", "batch", "d"),
    ("context_len", "context", "d"),
    ("label", "speedup", "s"),
    ("host_ms_mean", "host ms", ".3f"),
    ("host_ms_p50", "p50 ms", ".3f"),
]


def add_args(parser: argparse.ArgumentParser) -> None:
    """Register the command's flags and entry point on ``parser``."""
    parser.add_argument(
        "--batch-size", type=lambda t: parse_list(t, int), default=[1, 16, 64], help="e.g. 1,16,64"
    )
    parser.add_argument(
        "--context-len",
        type=lambda t: parse_list(t, int),
        default=[128, 512, 2048],
        help="prompt tokens before the timed steps, e.g. 128,512,2048",
    )
    parser.add_argument("--num-steps", type=int, default=32, help="timed decode steps per point")
    add_speedups_arg(parser, default="1")
    parser.add_argument("--profile-steps", type=int, default=8, help="decode steps profiled")
    parser.add_argument("--no-profile", action="store_true", help="skip the time breakdown")
    parser.add_argument("--peak-batch", type=int, default=64, help="rows of the matmul peak test")
    parser.add_argument(
        "--matmul-seconds", type=float, default=0.2, help="time spent on each matmul shape"
    )
    add_engine_args(parser)
    parser.add_argument("--output-json", default=None, help="write the results here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the command, print its tables; returns the exit code."""
    from skipdecode.benchmarks.step_profile import BREAKDOWN_COLUMNS, MATMUL_COLUMNS

    payload = bench_latency(args)
    print(format_table(payload["results"], COLUMNS))
    if payload.get("host"):
        print("\nhost work per decode step (the model's layers and LM head stubbed out):")
        print(format_table(payload["host"], HOST_COLUMNS))
    if payload.get("breakdown"):
        breakdown = payload["breakdown"]
        print(f"\nwhere a decode step goes (batch {breakdown['batch_size']},"
              f" context {breakdown['context_len']}, full depth, torch.profiler):")  # fmt: skip
        print(format_table(breakdown["components"], BREAKDOWN_COLUMNS))
    if payload.get("matmul"):
        matmul = payload["matmul"]
        print(f"\ntorch.matmul at the model's shapes, batch {matmul['batch_size']}:")
        print(format_table(matmul["shapes"], MATMUL_COLUMNS))
        print(
            f"model-mix rate {matmul['model_mix_gflops']:.1f} GFLOP/s;"
            f" decode step (batch {matmul['batch_size']}, full depth) reaches"
            f" {_fmt(matmul.get('decode_fraction_of_matmul'), '.1%')} of it"
        )
    return 0


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def bench_latency(args: argparse.Namespace) -> dict:
    """Time the grid, then profile one point and measure the matmul rate; return the payload."""
    from skipdecode.benchmarks import step_profile

    _check_args(args)
    speedups = list(dict.fromkeys([1.0, *args.speedups]))
    engine = _engine_for_grid(args)
    flops = ModelFlops.from_hf_config(engine.hf_config)
    measure_decode(engine, 1, min(args.context_len), skip_for(1.0), 2, args.seed)  # warm-up
    rows = []
    results: dict = {"num_layers": flops.num_layers, "results": rows, "complete": False}
    for batch in args.batch_size:
        for context in args.context_len:
            for speedup in speedups:
                point = measure_decode(
                    engine, batch, context, skip_for(speedup), args.num_steps, args.seed
                )
                rows.append(_row(batch, context, speedup, point, flops, args.num_steps))
                # Rewritten after every point: a run stopped by a timeout keeps what it measured.
                write_results(args.output_json, "latency", vars(args), results)
    # Host work alone: the same decode steps with the model stubbed out (step_profile).
    host_rows = results["host"] = []
    with step_profile.model_stubbed(engine):
        for batch in args.batch_size:
            for speedup in speedups:
                point = measure_decode(
                    engine, batch, args.context_len[0], skip_for(speedup), args.num_steps, args.seed
                )
                ms = 1e3 * np.asarray(point["seconds"])
                host_rows.append({
                    "batch_size": batch, "context_len": args.context_len[0],
                    "label": speedup_label(speedup), "host_ms_mean": float(ms.mean()),
                    "host_ms_p50": float(np.percentile(ms, 50)),
                })  # fmt: skip
    write_results(args.output_json, "latency", vars(args), results)
    full = [r for r in rows if r["target_speedup"] == 1.0]
    if not args.no_profile:
        batch, context = max(args.batch_size), args.context_len[0]
        reference = next(r for r in full if (r["batch_size"], r["context_len"]) == (batch, context))
        results["breakdown"] = step_profile.profile_decode(
            engine, batch, context, args.profile_steps, args.seed, reference["step_ms_mean"]
        )
    matmul = step_profile.matmul_rates(engine.runner.model, args.peak_batch, args.matmul_seconds)
    at_peak = [r for r in full if r["batch_size"] == args.peak_batch]
    if at_peak:
        achieved = at_peak[0]["achieved_gflops"]
        matmul["decode_context_len"] = at_peak[0]["context_len"]
        matmul["decode_achieved_gflops"] = achieved
        matmul["decode_fraction_of_matmul"] = achieved / matmul["model_mix_gflops"]
        matmul["decode_fraction_of_best_shape"] = achieved / matmul["best_shape_gflops"]
    results["matmul"] = matmul
    results["complete"] = True
    return write_results(args.output_json, "latency", vars(args), results)


def _check_args(args: argparse.Namespace) -> None:
    if min(args.batch_size) < 1 or min(args.context_len) < 1:
        raise ValueError("--batch-size and --context-len values must be >= 1")
    if args.num_steps < 1 or args.profile_steps < 1 or args.peak_batch < 1:
        raise ValueError("--num-steps, --profile-steps and --peak-batch must be >= 1")


def _engine_for_grid(args: argparse.Namespace):
    """One engine whose KV pool holds the largest batch at the longest context, at full depth."""
    from skipdecode.loading import load_model
    from skipdecode.scheduler import DepthSchedule

    loaded = load_model(model_config(args))
    num_layers = loaded.model.num_layers
    batch, context = max(args.batch_size), max(args.context_len)
    max_steps = max(args.num_steps, args.profile_steps)
    max_tokens = decode_max_tokens(batch, context, max_steps, args.max_num_batched_tokens)
    per_seq = kv_blocks_per_sequence(
        DepthSchedule.full(num_layers), args.block_size, context, max_tokens
    )
    return build_engine(args, num_kv_blocks=batch * per_seq, max_num_seqs=batch, loaded=loaded)


def decode_max_tokens(batch: int, context: int, num_steps: int, max_batched: int) -> int:
    """``max_tokens`` that keeps every sequence running through ``num_steps`` timed steps.

    With chunked prefill, sequences whose prompt finished early decode while the others are
    still prefilling: they get up to one extra token per prefill step.
    """
    return num_steps + 2 + -(-batch * context // max_batched)


def start_decoding(engine, batch: int, context: int, skip, num_steps: int, seed: int) -> None:
    """Queue ``batch`` requests and step until each has its first token (prefill done)."""
    from skipdecode.scheduler import SamplingParams

    max_batched = engine.scheduler_config.max_num_batched_tokens
    max_tokens = decode_max_tokens(batch, context, num_steps, max_batched)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    pending = {
        engine.add_request(prompt, params, skip)
        for prompt in engine_prompts(engine, batch, context, seed)
    }
    while pending:
        outputs, _ = engine.step_with_stats()
        pending.difference_update(o.request_id for o in outputs)


def stop_decoding(engine) -> None:
    """Abort whatever still runs (the timed window is over)."""
    for request_id in list(engine.scheduler.requests):
        engine.abort_request(request_id)


def measure_decode(engine, batch: int, context: int, skip, num_steps: int, seed: int) -> dict:
    """Prefill, then time ``num_steps`` decode steps of the whole batch."""
    start_decoding(engine, batch, context, skip, num_steps, seed)
    seconds, depths = [], []
    for _ in range(num_steps):
        _, stats = engine.step_with_stats()
        if stats.num_prompt_tokens or stats.num_generation_tokens != batch:
            raise RuntimeError(
                f"step was not a pure decode of {batch} sequences (raise --max-num-batched-tokens"
                " or the KV pool)"
            )
        seconds.append(stats.step_seconds)
        depths.append(stats.generated_depths)
    stop_decoding(engine)
    return {"seconds": seconds, "depths": depths}


def _row(batch, context, speedup, point, flops: ModelFlops, num_steps: int) -> dict:
    seconds = np.asarray(point["seconds"])
    mean_context = context + (num_steps + 1) / 2  # the fed tokens sit at context .. +num_steps-1
    step_flops = [sum(flops.token_flops(d, mean_context) for d in ds) for ds in point["depths"]]
    all_depths = [d for ds in point["depths"] for d in ds]
    return {
        "batch_size": batch,
        "context_len": context,
        "label": speedup_label(speedup),
        "target_speedup": speedup,
        "mean_depth": float(np.mean(all_depths)),
        "step_ms_mean": float(seconds.mean() * 1e3),
        "step_ms_p50": float(np.percentile(seconds, 50) * 1e3),
        "step_ms_p90": float(np.percentile(seconds, 90) * 1e3),
        "tokens_per_s": batch / float(seconds.mean()),
        "achieved_gflops": float(np.mean(step_flops) / seconds.mean() / 1e9),
    }
