"""``skipdecode bench throughput``: offline requests/s and tokens/s of the engine per speedup.

Every request is a random token-id prompt of exactly ``--input-len`` ids and generates exactly
``--output-len`` tokens (greedy, ``ignore_eos``). All requests are queued at once and the engine
steps until they finish; a short warm-up run per speedup comes first.
"""

from __future__ import annotations

import argparse
import time

from skipdecode.benchmarks.common import format_table, speedup_label, write_results
from skipdecode.benchmarks.engine_args import (
    add_engine_args,
    add_speedups_arg,
    build_engine,
    engine_prompts,
    skip_for,
)
from skipdecode.benchmarks.flops import ModelFlops, flop_ideal_gains

WARMUP_MAX_TOKENS = 16

COLUMNS = [
    ("label", "speedup", "s"),
    ("elapsed_s", "time s", ".2f"),
    ("requests_per_s", "req/s", ".2f"),
    ("output_tokens_per_s", "out tok/s", ".1f"),
    ("total_tokens_per_s", "total tok/s", ".1f"),
    ("measured_gain", "gain vs 1x", ".2f"),
    ("theoretical_speedup", "theoretical", ".2f"),
    ("flop_ideal_gain", "FLOP-ideal", ".2f"),
    ("flop_ideal_gain_e2e", "FLOP-ideal e2e", ".2f"),
]


def add_args(parser: argparse.ArgumentParser) -> None:
    """Register the command's flags and entry point on ``parser``."""
    parser.add_argument("--num-prompts", type=int, default=64, help="requests per speedup")
    parser.add_argument("--input-len", type=int, default=128, help="prompt tokens per request")
    parser.add_argument("--output-len", type=int, default=128, help="tokens generated per request")
    add_speedups_arg(parser)
    add_engine_args(parser)
    parser.add_argument("--output-json", default=None, help="write the results here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the command, print its tables; returns the exit code."""
    payload = bench_throughput(args)
    print(format_table(payload["results"], COLUMNS))
    return 0


def bench_throughput(args: argparse.Namespace) -> dict:
    """Run every speedup (1x first, added if missing) and return the results payload."""
    if args.num_prompts < 1 or args.input_len < 1 or args.output_len < 1:
        raise ValueError("--num-prompts, --input-len and --output-len must be >= 1")
    speedups = list(dict.fromkeys([1.0, *args.speedups]))
    engine = build_engine(args)
    flops = ModelFlops.from_hf_config(engine.hf_config)
    warmup = engine_prompts(
        engine, min(args.num_prompts, args.max_num_seqs), args.input_len, args.seed + 1
    )
    for speedup in speedups:  # every schedule once: its step shapes are warm too
        _generate(engine, warmup, min(args.output_len, WARMUP_MAX_TOKENS), skip_for(speedup))
    prompts = engine_prompts(engine, args.num_prompts, args.input_len, args.seed)
    rows = []
    for speedup in speedups:
        run_stats = _generate(engine, prompts, args.output_len, skip_for(speedup))
        rows.append(_row(speedup, run_stats, args, flops))
    for row in rows:
        row["measured_gain"] = row["output_tokens_per_s"] / rows[0]["output_tokens_per_s"]
    return write_results(
        args.output_json,
        "throughput",
        vars(args),
        {"num_layers": flops.num_layers, "results": rows},
    )


def _generate(engine, prompts: list[list[int]], output_len: int, skip) -> dict:
    """Queue all prompts, step to completion; returns the finished outputs and step counts."""
    from skipdecode.scheduler import SamplingParams

    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    ids = [engine.add_request(prompt, params, skip) for prompt in prompts]
    finals, num_steps, num_preemptions = {}, 0, 0
    while engine.has_unfinished_requests():
        outputs, stats = engine.step_with_stats()
        if stats is not None:
            num_steps += 1
            num_preemptions += stats.num_preemptions
        finals.update((o.request_id, o) for o in outputs if o.finished)
    elapsed = time.perf_counter() - start
    return {
        "outputs": [finals[i] for i in ids],
        "elapsed_s": elapsed,
        "num_steps": num_steps,
        "num_preemptions": num_preemptions,
    }


def _row(speedup: float, run_stats: dict, args: argparse.Namespace, flops: ModelFlops) -> dict:
    outputs, elapsed = run_stats["outputs"], run_stats["elapsed_s"]
    num_output = sum(o.num_generated_tokens for o in outputs)
    num_prompt = sum(o.num_prompt_tokens for o in outputs)
    decode_gain, e2e_gain = flop_ideal_gains(flops, args.input_len, [o.depths for o in outputs])
    return {
        "label": speedup_label(speedup),
        "target_speedup": speedup,
        "num_requests": len(outputs),
        "num_prompt_tokens": num_prompt,
        "num_output_tokens": num_output,
        "num_output_tokens_expected": len(outputs) * args.output_len,
        "elapsed_s": elapsed,
        "requests_per_s": len(outputs) / elapsed,
        "output_tokens_per_s": num_output / elapsed,
        "total_tokens_per_s": (num_output + num_prompt) / elapsed,
        "theoretical_speedup": sum(o.theoretical_speedup for o in outputs) / len(outputs),
        "flop_ideal_gain": decode_gain,
        "flop_ideal_gain_e2e": e2e_gain,
        "mean_depth": sum(map(sum, (o.depths for o in outputs))) / max(num_output, 1),
        "num_steps": run_stats["num_steps"],
        "num_preemptions": run_stats["num_preemptions"],
    }
