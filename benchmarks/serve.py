"""``skipdecode bench serve``: online latency and throughput of an OpenAI-compatible server.

Sends ``--num-prompts`` streamed completions per run, either with a fixed number in flight
(``--concurrency 1,4,16``: one run each) or arriving as a seeded Poisson process
(``--request-rate 1,2,4,inf``: one run each; ``inf`` sends all at once). Prompts are random
(``--dataset random``) or ShareGPT chats sampled as vLLM's ``benchmark_serving.py`` does
(``--dataset sharegpt``, see ``workloads.py``). Measures time to first token (TTFT),
inter-token latency (ITL, the gaps between text chunks), end-to-end latency, tokens/s, errors
and, under ``--slo-ttft`` / ``--slo-itl``, goodput. Output tokens come from the final chunk's
``usage`` when the server sends it, else one per text chunk. The whole command is
bounded by ``--timeout`` seconds; requests cut off count as errors. Each run gets prompts of its
own (same ``--seed``, same prompts for every server), so no run gains from a prefix cache that
an earlier run filled. Only loopback base URLs are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time

import httpx
import numpy as np

from skipdecode.benchmarks import workloads
from skipdecode.benchmarks.common import format_table, parse_list, percentiles, write_results
from skipdecode.benchmarks.serve_client import (
    RequestResult,
    check_loopback,
    completion_body,
    stream_completion,
)
from skipdecode.benchmarks.workloads import SampledRequest

COLUMNS = [
    ("label", "run", "s"),
    ("completed", "ok", "d"),
    ("num_errors", "errors", "d"),
    ("requests_per_s", "req/s", ".2f"),
    ("output_tokens_per_s", "out tok/s", ".1f"),
    ("goodput_requests_per_s", "good/s", ".2f"),
    ("ttft_ms_p50", "TTFT p50", ".1f"),
    ("ttft_ms_p99", "TTFT p99", ".1f"),
    ("itl_ms_p50", "ITL p50", ".2f"),
    ("itl_ms_p99", "ITL p99", ".2f"),
    ("e2e_ms_p50", "E2E p50", ".0f"),
    ("e2e_ms_p99", "E2E p99", ".0f"),
    ("theoretical_speedup", "theoretical", ".2f"),
]
WARMUP_MAX_TOKENS = 8
LATENCY_PERCENTILES = (50, 90, 95, 99)


def add_args(parser: argparse.ArgumentParser) -> None:
    """Register the command's flags and entry point on ``parser``."""
    parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="loopback only")
    parser.add_argument("--endpoint", default="/v1/completions", help="completions path")
    parser.add_argument(
        "--concurrency", type=lambda t: parse_list(t, int), default=[1, 4, 16], help="e.g. 1,4,16"
    )
    parser.add_argument(
        "--request-rate",
        type=workloads.parse_rates,
        default=None,
        metavar="RATES",
        help="instead of --concurrency: Poisson arrivals per second, one run per value,"
        " e.g. 1,2,4,inf (inf: all at once)",
    )
    parser.add_argument(
        "--max-concurrency", type=int, default=None, help="cap on requests in flight (rate mode)"
    )
    parser.add_argument("--num-prompts", type=int, default=64, help="requests per run")
    parser.add_argument(
        "--prompts-per-concurrency",
        type=int,
        default=None,
        help="instead of --num-prompts: K x concurrency requests per run (each run ~K rounds)",
    )
    parser.add_argument(
        "--input-len", type=int, default=128, help="random prompts: tokens (or words)"
    )
    parser.add_argument(
        "--output-len", type=int, default=128, help="random prompts: max_tokens of each request"
    )
    workloads.add_workload_args(parser)
    parser.add_argument(
        "--prompt-kind",
        choices=["tokens", "words"],
        default="tokens",
        help="random token ids (exact length; needs the model's tokenizer) or random words",
    )
    parser.add_argument(
        "--model", default=None, help="model path for the tokenizer (default: SmolLM2-135M)"
    )
    parser.add_argument("--served-model-name", default=None, help="the request's `model` field")
    parser.add_argument("--skip", type=json.loads, default=None, help="e.g. '{\"speedup\": 2}'")
    parser.add_argument("--api-key", default=None, help="sent as Authorization: Bearer KEY")
    parser.add_argument("--seed", type=int, default=0, help="seed of prompts and arrivals")
    parser.add_argument("--num-warmup", type=int, default=1, help="short requests sent first")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for everything")
    parser.add_argument("--label", default=None, help="name of the system in the results")
    parser.add_argument("--output-json", default=None, help="write the results here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the command, print its tables; returns the exit code."""
    try:
        payload = bench_serve(args)
    except ServerUnavailable as exc:
        print(f"skipdecode bench serve: {exc}", file=sys.stderr)
        return 1
    data = payload["dataset"]
    shape = f"{args.input_len} in / {args.output_len} out"
    if data["name"] == "sharegpt":
        shape = (
            f"ShareGPT, mean {data['prompt_len_mean']:.0f} in / {data['output_len_mean']:.0f} out"
        )
    print(f"{payload['system']}: {shape}, times in ms")
    print(format_table(payload["results"], COLUMNS))
    return 0 if all(r["num_errors"] == 0 for r in payload["results"]) else 1


def build_requests(
    args: argparse.Namespace, base_url: str, count: int
) -> tuple[list[SampledRequest], dict]:
    """``count`` seeded requests of ``--dataset``, and a record of how they were drawn."""
    if args.dataset == "random":
        return workloads.random_requests(args, count), {"name": "random"}
    max_model_len = workloads.server_max_model_len(base_url, _headers(args))
    return workloads.sharegpt_requests(args, count, max_model_len)


def _headers(args: argparse.Namespace) -> dict[str, str]:
    return {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}


def bench_serve(args: argparse.Namespace) -> dict:
    """Check the URL and arguments, then run every concurrency (or the rate) in turn."""
    base_url = check_loopback(args.base_url)
    if args.num_prompts < 1 or args.output_len < 1 or args.input_len < 1:
        raise ValueError("--num-prompts, --input-len and --output-len must be >= 1")
    if args.timeout <= 0 or min(args.concurrency) < 1 or args.num_warmup < 0:
        raise ValueError("--timeout must be > 0, --concurrency values >= 1, --num-warmup >= 0")
    workloads.check_workload_args(args)
    if args.prompts_per_concurrency is not None and args.prompts_per_concurrency < 1:
        raise ValueError("--prompts-per-concurrency must be >= 1")
    runs = _runs(args)
    # Each run (and the warm-up) gets prompts of its own, so that no run profits from a
    # server's prefix cache (llama.cpp's slots, vLLM's prefix caching) filled by an earlier one.
    num_measured = sum(run[3] for run in runs)
    requests, dataset = build_requests(args, base_url, num_measured + args.num_warmup)
    dataset.update(workloads.sample_stats(requests[:num_measured]))
    rows = asyncio.run(_sweep(args, base_url + args.endpoint, runs, requests))
    results = {"system": args.label or base_url, "dataset": dataset, "results": rows}
    return write_results(args.output_json, "serve", _json_args(args), results)


def _json_args(args: argparse.Namespace) -> dict:
    """The arguments as JSON values: an ``inf`` rate is written as the string ``"inf"``."""
    values = vars(args).copy()
    if values.get("request_rate"):
        values["request_rate"] = [_rate_value(r) for r in values["request_rate"]]
    return values


def _rate_value(rate: float | None) -> float | str | None:
    return "inf" if rate is not None and math.isinf(rate) else rate


class ServerUnavailable(RuntimeError):
    """The warm-up request failed: no point in measuring."""


def _runs(args: argparse.Namespace) -> list[tuple[str, int | None, float | None, int]]:
    """(label, requests in flight or None, arrival rate or None, requests) of each run."""
    if args.request_rate is not None:
        return [
            (f"rate={rate:g}/s", args.max_concurrency, rate, args.num_prompts)
            for rate in args.request_rate
        ]
    per = args.prompts_per_concurrency
    return [
        (f"c={c}", c, None, args.num_prompts if per is None else per * c) for c in args.concurrency
    ]


async def _sweep(
    args: argparse.Namespace, url: str, runs: list[tuple], requests: list[SampledRequest]
) -> list[dict]:
    deadline = time.monotonic() + args.timeout
    headers = _headers(args)
    model, skip = args.served_model_name, args.skip
    offsets = np.cumsum([0] + [run[3] for run in runs])
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    # trust_env=False: loopback traffic must not go through a proxy from the environment.
    async with httpx.AsyncClient(timeout=None, limits=limits, trust_env=False) as client:
        for request in requests[offsets[-1] :]:
            warm = completion_body(request.prompt, WARMUP_MAX_TOKENS, model, skip)
            try:
                result = await asyncio.wait_for(
                    stream_completion(client, url, warm, headers), deadline - time.monotonic()
                )
            except asyncio.TimeoutError:
                result = RequestResult(error="no answer within --timeout")
            if not result.ok:
                raise ServerUnavailable(f"warm-up request to {url} failed: {result.error}")
        rows = []
        for i, (label, concurrency, rate, _) in enumerate(runs):
            batch = requests[offsets[i] : offsets[i + 1]]
            bodies = [completion_body(r.prompt, r.output_len, model, skip) for r in batch]
            results, duration = await _run(
                client, url, bodies, headers, concurrency, rate, args.seed, deadline
            )
            rows.append(summarize(label, concurrency, rate, results, duration, args, batch))
        return rows


async def _run(client, url, bodies, headers, concurrency, rate, seed, deadline):
    """Send every body (at most ``concurrency`` in flight; Poisson arrivals at a finite ``rate``,
    all at once for ``inf``)."""
    gate = asyncio.Semaphore(concurrency) if concurrency else None
    arrivals = np.zeros(len(bodies))
    if rate is not None and math.isfinite(rate):
        arrivals = np.cumsum(np.random.default_rng(seed).exponential(1 / rate, len(bodies)))
        arrivals -= arrivals[0]  # the first request goes at once
    start = time.perf_counter()

    async def one(body: dict, arrival: float) -> RequestResult:
        await asyncio.sleep(max(arrival - (time.perf_counter() - start), 0))
        if gate is None:
            return await stream_completion(client, url, body, headers)
        async with gate:
            return await stream_completion(client, url, body, headers)

    tasks = [asyncio.create_task(one(b, a)) for b, a in zip(bodies, arrivals)]
    _, pending = await asyncio.wait(tasks, timeout=max(deadline - time.monotonic(), 0))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    duration = time.perf_counter() - start
    cut = RequestResult(error="cut off by --timeout")
    return [cut if t in pending else t.result() for t in tasks], duration


def summarize(
    label: str,
    concurrency: int | None,
    rate: float | None,
    results: list[RequestResult],
    duration: float,
    args: argparse.Namespace,
    requests: list[SampledRequest],
) -> dict:
    """Aggregate one run: counts, throughput, goodput, latency percentiles (ms), server usage.

    ``requests[i]`` is what ``results[i]`` asked for (its expected output and prompt lengths).
    """
    done = [r for r in results if r.ok]
    asked = [q for q, r in zip(requests, results) if r.ok]
    errors = [r.error for r in results if not r.ok]
    num_output = sum(r.num_output_tokens for r in done)
    usages = [r.usage or {} for r in done]
    prompt_counts = [u.get("prompt_tokens") for u in usages]
    num_prompt = sum(
        c if isinstance(c, int) else q.prompt_len for c, q in zip(prompt_counts, asked)
    )
    speedups = [u["theoretical_speedup"] for u in usages if "theoretical_speedup" in u]
    sources = {"usage" if u.get("completion_tokens") is not None else "chunks" for u in usages}
    return {
        "label": label,
        "concurrency": concurrency,
        "request_rate": _rate_value(rate),
        "num_requests": len(results),
        "completed": len(done),
        "num_errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
        "duration_s": duration,
        "requests_per_s": len(done) / duration,
        "num_output_tokens": num_output,
        "num_output_tokens_expected": sum(q.output_len for q in asked),
        "token_count_source": "+".join(sorted(sources)) or None,
        "output_tokens_per_s": num_output / duration,
        "total_tokens_per_s": (num_output + num_prompt) / duration,
        **workloads.goodput(results, duration, args.slo_ttft, args.slo_itl),
        **percentiles(
            [r.ttft for r in done if r.ttft is not None], "ttft_ms", 1e3, LATENCY_PERCENTILES
        ),
        **percentiles([x for r in done for x in r.itls], "itl_ms", 1e3, LATENCY_PERCENTILES),
        **percentiles([r.e2e for r in done], "e2e_ms", 1e3, LATENCY_PERCENTILES),
        "theoretical_speedup": float(np.mean(speedups)) if speedups else None,
        "layers_computed": sum(u.get("layers_computed", 0) for u in usages),
        "layers_skipped": sum(u.get("layers_skipped", 0) for u in usages),
    }
