"""``skipdecode bench ...``: registers the bench subcommands on the main CLI.

Each bench module owns its flags (``add_args``) and its entry (``run``); heavy imports (torch,
the engine, httpx) happen only when a command runs.
"""

from __future__ import annotations

import argparse
import importlib

# subcommand -> (module under skipdecode.benchmarks, one-line help)
COMMANDS = {
    "throughput": ("throughput", "offline requests/s and tokens/s of the engine per speedup"),
    "serve": ("serve", "online TTFT, inter-token and end-to-end latency against an HTTP server"),
    "latency": ("latency", "decode step time vs batch size and context, with a time breakdown"),
    "kv": ("kv", "KV memory per sequence and sequences that fit a KV budget, per speedup"),
    "hf": ("hf_generate", "Hugging Face transformers generate(): the naive batched anchor"),
    "gpu": ("gpu_opt", "decode tok/s of random-weight OPT-1.3B/6.7B per batch and speedup"),
    "structured": ("structured", "tokens/s with and without a JSON-schema constraint"),
    "failover": ("failover", "kill one replica of serve --replicas N under load; what fails"),
}


def add_bench_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` with its subcommands to the ``skipdecode`` command."""
    bench = subparsers.add_parser(
        "bench",
        help="benchmarks (throughput, serve, latency, kv, hf, gpu, structured, failover)",
        description="Benchmarks of the engine, the server and baselines (docs/benchmarks.md).",
    )
    commands = bench.add_subparsers(dest="bench_command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f"skipdecode.benchmarks.{module_name}")
        parser = commands.add_parser(
            name,
            help=help_text,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_args(parser)
