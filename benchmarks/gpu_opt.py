"""``skipdecode bench gpu``: decode throughput of random-weight OPT-1.3B / OPT-6.7B per speedup.

The SkipDecode paper's models, built offline from their published shapes (``opt_presets``) with
random weights, in fp16 on CUDA by default. For each model, batch size and speedup, ``batch``
requests with random ``--input-len``-token prompts each generate exactly ``--output-len`` tokens
(greedy, ``ignore_eos``). Decode throughput counts only the steps without prompt tokens: tokens
sampled in them / their wall time. ``--time-budget`` bounds the whole command: a point whose
estimated time does not fit is skipped, one that runs past the deadline is aborted, and both are
listed under ``skipped``. ``--model-preset tiny`` runs the same on CPU in seconds.
"""

from __future__ import annotations

import argparse
import gc
import time

from skipdecode.benchmarks.common import format_table, parse_list, speedup_label, write_results
from skipdecode.benchmarks.decode_timing import generate_batch
from skipdecode.benchmarks.engine_args import add_speedups_arg, skip_for
from skipdecode.benchmarks.opt_presets import PRESETS, estimated_params, load_random_opt

WARMUP_MAX_TOKENS = 8

COLUMNS = [
    ("model", "model", "s"),
    ("batch_size", "batch", "d"),
    ("label", "speedup", "s"),
    ("schedule", "D_max->D_min", "s"),
    ("decode_step_ms", "step ms", ".2f"),
    ("decode_tokens_per_s", "decode tok/s", ".1f"),
    ("measured_gain", "gain vs 1x", ".2f"),
    ("theoretical_speedup", "theoretical", ".2f"),
    ("flop_ideal_gain", "FLOP-ideal", ".2f"),
    ("output_tokens_per_s", "e2e out tok/s", ".1f"),
]


def add_args(parser: argparse.ArgumentParser) -> None:
    """Register the command's flags and entry point on ``parser``."""
    parser.add_argument(
        "--model-preset",
        type=lambda t: parse_list(t, str.strip),
        default=["1.3b", "6.7b"],
        help=f"comma-separated, from {', '.join(PRESETS)} (default 1.3b,6.7b)",
    )
    parser.add_argument(
        "--batch-size",
        type=lambda t: parse_list(t, int),
        default=[1, 8, 16, 32, 64],
        help="requests run together per point, comma-separated (default 1,8,16,32,64)",
    )
    parser.add_argument("--input-len", type=int, default=128, help="prompt tokens per request")
    parser.add_argument("--output-len", type=int, default=128, help="tokens generated per request")
    add_speedups_arg(parser, default="1,2,3,4,5")
    parser.add_argument("--dtype", default="float16", help="float16 | bfloat16 | float32")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--time-budget", type=float, default=420.0, help="seconds for the whole command"
    )
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--block-size", type=int, default=16, help="KV positions per block")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random prompts")
    parser.add_argument("--output-json", default=None, help="write the results here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the command, print its table; returns the exit code."""
    payload = bench_gpu(args)
    print(format_table(payload["results"], COLUMNS) if payload["results"] else "(no results)")
    if payload["stopped_early"]:
        print(f"\ntime budget ({args.time_budget:g} s) hit: {len(payload['skipped'])} point(s)"
              " skipped or aborted (see 'skipped' in the JSON)")  # fmt: skip
    return 0


class Deadline:
    """A time budget: ``budget_s`` seconds from its creation."""

    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.end = self.start + budget_s

    def fits(self, seconds: float) -> bool:
        return time.perf_counter() + seconds <= self.end

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def share(self, num_parts: int) -> Deadline:
        """A deadline for the next of ``num_parts`` parts: an equal share of the time left."""
        return Deadline(max(self.end - time.perf_counter(), 0.0) / num_parts)


def bench_gpu(args: argparse.Namespace) -> dict:
    """Every preset, batch size and speedup (1x first) within the time budget; the payload."""
    _check_args(args)
    deadline = Deadline(args.time_budget)
    speedups = list(dict.fromkeys([1.0, *args.speedups]))
    models, rows, skipped = {}, [], []
    seconds_per_param = None  # load time of the last model, per parameter
    for index, preset in enumerate(args.model_preset):
        # Each model gets an equal share of the time left (unused time passes on to the next).
        model_deadline = deadline.share(len(args.model_preset) - index)
        points = [(batch, speedup) for batch in args.batch_size for speedup in speedups]
        load_estimate = (seconds_per_param or 0.0) * estimated_params(preset)
        if not model_deadline.fits(load_estimate):
            skipped.extend(
                _skip(preset, b, s, "model load would pass the deadline") for b, s in points
            )
            continue
        model = load_random_opt(preset, args.dtype, args.device)
        seconds_per_param = model.load_s / model.num_params
        models[preset] = model.describe()
        engine = _engine(model.loaded, args)
        model_rows, model_skipped = _run_points(engine, preset, points, args, model_deadline)
        rows.extend(model_rows)
        skipped.extend(model_skipped)
        del engine, model
        _free_memory()
    results = {
        "models": models,
        "results": rows,
        "skipped": skipped,
        "stopped_early": bool(skipped),
        "total_s": deadline.elapsed(),
    }
    return write_results(args.output_json, "gpu_opt", vars(args), results)


def _check_args(args: argparse.Namespace) -> None:
    if args.input_len < 1 or args.output_len < 1 or min(args.batch_size) < 1:
        raise ValueError("--input-len, --output-len and --batch-size values must be >= 1")
    unknown = sorted(set(args.model_preset) - set(PRESETS))
    if unknown:
        raise ValueError(f"unknown --model-preset {', '.join(unknown)} (from {', '.join(PRESETS)})")
    if args.time_budget < 0:
        raise ValueError("--time-budget must be >= 0")


def _engine(loaded, args: argparse.Namespace):
    """An engine whose KV pool holds the largest batch at full length and full depth."""
    from skipdecode.benchmarks.kv import kv_blocks_per_sequence
    from skipdecode.config import CacheConfig, EngineConfig, ModelConfig
    from skipdecode.engine import Engine
    from skipdecode.scheduler import DepthSchedule, SchedulerConfig

    num_layers = loaded.hf_config.num_hidden_layers
    if args.input_len + args.output_len > loaded.max_model_len:
        raise ValueError(f"--input-len + --output-len exceeds the context ({loaded.max_model_len})")
    per_seq = kv_blocks_per_sequence(
        DepthSchedule.full(num_layers), args.block_size, args.input_len, args.output_len
    )
    max_batch = max(args.batch_size)
    config = EngineConfig(
        model=ModelConfig(dtype=args.dtype, device=args.device, load_format="dummy"),
        cache=CacheConfig(block_size=args.block_size, num_blocks=max_batch * per_seq),
        scheduler=SchedulerConfig(
            max_num_seqs=max_batch, max_num_batched_tokens=args.max_num_batched_tokens
        ),
    )
    return Engine(config, loaded)


def _run_points(engine, preset: str, points: list, args: argparse.Namespace, deadline) -> tuple:
    """Warm up, then measure each (batch, speedup) point that fits the deadline; (rows, skipped)."""
    from skipdecode.benchmarks.flops import ModelFlops

    flops = ModelFlops.from_hf_config(engine.hf_config)
    _warm_up(engine, [s for _, s in points], args, deadline)
    rows, skipped, last_s = [], [], 0.0
    for batch, speedup in points:
        if not deadline.fits(last_s):
            skipped.append(_skip(preset, batch, speedup, "estimated time would pass the deadline"))
            continue
        skip = skip_for(speedup)
        stats = generate_batch(
            engine, batch, args.input_len, args.output_len, skip, args.seed, deadline
        )
        if stats is None:
            skipped.append(_skip(preset, batch, speedup, "aborted at the deadline"))
            continue
        last_s = stats["elapsed_s"]
        schedule = engine.resolve_skip(skip)
        rows.append(_row(preset, batch, speedup, schedule, stats, args, flops))
    _add_gains(rows)
    return rows, skipped


def _warm_up(engine, speedups: list[float], args: argparse.Namespace, deadline) -> None:
    """A short run of the largest batch per schedule: its step shapes are warm too."""
    max_batch, warmup_len = max(args.batch_size), min(args.output_len, WARMUP_MAX_TOKENS)
    for speedup in dict.fromkeys(speedups):
        skip = skip_for(speedup)
        generate_batch(engine, max_batch, args.input_len, warmup_len, skip, args.seed + 1, deadline)


def _add_gains(rows: list[dict]) -> None:
    """``measured_gain``: decode tokens/s over that of the same model and batch at 1x."""
    full = {(r["model"], r["batch_size"]): r for r in rows if r["target_speedup"] == 1.0}
    for row in rows:
        base = full.get((row["model"], row["batch_size"]), {}).get("decode_tokens_per_s")
        rate = row["decode_tokens_per_s"]
        row["measured_gain"] = rate / base if rate and base else None


def _row(preset, batch, speedup, schedule, stats, args, flops) -> dict:
    from skipdecode.benchmarks.flops import flop_ideal_gains

    outputs = stats["outputs"]
    num_output = sum(o.num_generated_tokens for o in outputs)
    decode_gain, e2e_gain = flop_ideal_gains(flops, args.input_len, [o.depths for o in outputs])
    num_steps, decode_s = stats["num_decode_steps"], stats["decode_s"]
    return {
        "model": preset,
        "num_layers": schedule.num_layers,
        "batch_size": batch,
        "label": speedup_label(speedup),
        "target_speedup": speedup,
        "schedule": f"{schedule.max_depth}->{schedule.min_depth}",
        "max_depth": schedule.max_depth,
        "min_depth": schedule.min_depth,
        "schedule_speedup": schedule.theoretical_speedup(args.output_len),
        "num_requests": len(outputs),
        "num_prompt_tokens": sum(o.num_prompt_tokens for o in outputs),
        "num_output_tokens": num_output,
        "num_output_tokens_expected": batch * args.output_len,
        "elapsed_s": stats["elapsed_s"],
        "output_tokens_per_s": num_output / stats["elapsed_s"],
        "num_decode_steps": num_steps,
        "num_decode_tokens": stats["num_decode_tokens"],
        "decode_s": decode_s,
        "decode_step_ms": decode_s / num_steps * 1e3 if num_steps else None,
        "decode_tokens_per_s": stats["num_decode_tokens"] / decode_s if decode_s else None,
        "decode_mean_depth": stats["decode_mean_depth"],
        "theoretical_speedup": sum(o.theoretical_speedup for o in outputs) / len(outputs),
        "flop_ideal_gain": decode_gain,
        "flop_ideal_gain_e2e": e2e_gain,
        "num_preemptions": stats["num_preemptions"],
    }


def _skip(preset: str, batch: int, speedup: float, reason: str) -> dict:
    return {"model": preset, "batch_size": batch, "label": speedup_label(speedup), "reason": reason}


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
