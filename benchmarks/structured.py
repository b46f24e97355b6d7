"""``skipdecode bench structured``: what an output constraint costs the engine.

``--num-prompts`` random prompts decode ``--output-len`` tokens each (greedy, ``ignore_eos``), all
queued at once, first free, then each under a JSON schema that cannot close before the last token
(an array of at least 10,000 bounded integers: numbers, commas and the grammar's masks at every
step). Free and constrained runs alternate ``--repeats`` times per speedup, so machine noise hits
both; the table gives the median tokens/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

from skipdecode.benchmarks.common import format_table, speedup_label, write_results
from skipdecode.benchmarks.engine_args import (
    add_engine_args,
    add_speedups_arg,
    build_engine,
    engine_prompts,
    skip_for,
)

# Never complete within the run: every step is constrained, like the middle of a long JSON reply.
LONG_ARRAY = {
    "type": "array",
    "items": {"type": "integer", "minimum": 0, "maximum": 9999},
    "minItems": 10000,
}
COLUMNS = [
    ("label", "speedup", "s"),
    ("free_tokens_per_s", "free tok/s", ".1f"),
    ("constrained_tokens_per_s", "schema tok/s", ".1f"),
    ("ratio", "schema / free", ".3f"),
    ("num_requests", "streams", "d"),
]


def add_args(parser: argparse.ArgumentParser) -> None:
    """Register the command's flags and entry point on ``parser``."""
    parser.add_argument("--num-prompts", type=int, default=16, help="streams decoded at once")
    parser.add_argument("--input-len", type=int, default=128, help="prompt tokens per request")
    parser.add_argument("--output-len", type=int, default=128, help="tokens generated per request")
    parser.add_argument("--repeats", type=int, default=3, help="free/constrained pairs per speedup")
    add_speedups_arg(parser, default="1,2")
    add_engine_args(parser, max_num_seqs=16)
    parser.add_argument("--output-json", default=None, help="write the results here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    payload = bench_structured(args)
    print(format_table(payload["results"], COLUMNS))
    return 0


def bench_structured(args: argparse.Namespace) -> dict:
    from skipdecode.scheduler import SamplingParams, StructuredOutput

    if min(args.num_prompts, args.input_len, args.output_len, args.repeats) < 1:
        raise ValueError("--num-prompts, --input-len, --output-len and --repeats must be >= 1")
    engine = build_engine(args)
    free = SamplingParams(max_tokens=args.output_len, temperature=0.0, ignore_eos=True)
    constraint = StructuredOutput.json_schema(LONG_ARRAY)
    constrained = SamplingParams(
        max_tokens=args.output_len, temperature=0.0, ignore_eos=True, structured_output=constraint
    )
    prompts = engine_prompts(engine, args.num_prompts, args.input_len, args.seed)
    rows = []
    for speedup in args.speedups:
        skip = skip_for(speedup)
        for params in (free, constrained):  # warm-up: step shapes and the grammar's tokenizer
            _tokens_per_s(engine, prompts, params, skip, max_tokens=8)
        runs: dict[str, list[float]] = {"free": [], "constrained": []}
        for _ in range(args.repeats):
            runs["free"].append(_tokens_per_s(engine, prompts, free, skip))
            runs["constrained"].append(_tokens_per_s(engine, prompts, constrained, skip))
        free_rate = statistics.median(runs["free"])
        constrained_rate = statistics.median(runs["constrained"])
        rows.append(
            {
                "label": speedup_label(speedup),
                "target_speedup": speedup,
                "num_requests": len(prompts),
                "free_tokens_per_s": free_rate,
                "constrained_tokens_per_s": constrained_rate,
                "ratio": constrained_rate / free_rate,
                "runs": runs,
            }
        )
    return write_results(args.output_json, "structured", vars(args), {"results": rows})


def _tokens_per_s(engine, prompts, params, skip, max_tokens: int | None = None) -> float:
    from dataclasses import replace

    if max_tokens is not None:
        params = replace(params, max_tokens=max_tokens)
    start = time.perf_counter()
    ids = [engine.add_request(prompt, params, skip) for prompt in prompts]
    finals = {}
    while engine.has_unfinished_requests():
        finals.update((o.request_id, o) for o in engine.step() if o.finished)
    elapsed = time.perf_counter() - start
    num_tokens = sum(finals[i].num_generated_tokens for i in ids)
    if num_tokens != len(ids) * params.max_tokens:
        raise RuntimeError("a request ended early: the benchmark's constraint must not complete")
    return num_tokens / elapsed
