"""``skipdecode bench kv``: KV memory per sequence and how many sequences fit a KV budget.

No timing: the figures come from the engine's own accounting. A finished sequence holds, at
layer ``l``, the positions that ran ``l`` (``DepthSchedule.layer_num_tokens``; the last generated
token is never fed back, so it has no slot), rounded up to whole blocks by the
``KVCacheManager``. The budget buys ``budget // bytes_per_block`` blocks; sequences are allocated
at their full length until the next one no longer fits.
"""

from __future__ import annotations

import argparse

from skipdecode.benchmarks.common import format_table, speedup_label, write_results
from skipdecode.benchmarks.engine_args import add_speedups_arg, skip_for

MIB = 1 << 20

COLUMNS = [
    ("label", "speedup", "s"),
    ("theoretical_speedup", "theoretical", ".2f"),
    ("depths", "D_max->D_min", "s"),
    ("kv_blocks_per_seq", "blocks/seq", "d"),
    ("kv_mib_per_seq", "MiB/seq", ".3f"),
    ("kv_saving", "saved vs 1x", ".1%"),
    ("max_concurrent_seqs", "seqs in budget", "d"),
    ("capacity_gain", "capacity vs 1x", ".2f"),
]


def add_args(parser: argparse.ArgumentParser) -> None:
    """Register the command's flags and entry point on ``parser``."""
    parser.add_argument(
        "--model", default=None, help="HF model directory or .gguf file (default: SmolLM2-135M)"
    )
    parser.add_argument("--dtype", default="auto", help="KV dtype: auto (bf16) | float32 | ...")
    parser.add_argument("--budget-mib", type=float, default=64.0, help="KV pool size in MiB")
    parser.add_argument("--input-len", type=int, default=128, help="prompt tokens per sequence")
    parser.add_argument("--output-len", type=int, default=512, help="tokens generated per sequence")
    parser.add_argument("--block-size", type=int, default=16, help="KV positions per block")
    add_speedups_arg(parser)
    parser.add_argument("--output-json", default=None, help="write the results here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the command, print its tables; returns the exit code."""
    payload = bench_kv(args)
    print(
        f"KV budget {args.budget_mib:g} MiB = {payload['budget_blocks']} blocks of"
        f" {payload['bytes_per_block']} bytes; {args.input_len} prompt + {args.output_len}"
        " generated tokens per sequence"
    )
    print(format_table(payload["results"], COLUMNS))
    return 0


def kv_blocks_per_sequence(schedule, block_size: int, input_len: int, output_len: int) -> int:
    """Blocks a sequence holds once it has generated ``output_len`` tokens (all layers)."""
    from skipdecode.kv_cache import KVCacheManager

    counts = schedule.layer_num_tokens(input_len, input_len + output_len - 1)
    return KVCacheManager(1, block_size, schedule.num_layers).num_blocks_needed(None, counts)


def max_concurrent_sequences(
    schedule, block_size: int, num_blocks: int, input_len: int, output_len: int
) -> int:
    """Full-length sequences that a pool of ``num_blocks`` holds at once (allocated one by one)."""
    from skipdecode.kv_cache import KVCacheManager

    manager = KVCacheManager(num_blocks, block_size, schedule.num_layers)
    counts = schedule.layer_num_tokens(input_len, input_len + output_len - 1)
    num_seqs = 0
    while manager.can_allocate(num_seqs, counts):
        manager.allocate(num_seqs, counts)
        num_seqs += 1
    return num_seqs


def bench_kv(args: argparse.Namespace) -> dict:
    """Per speedup (1x added if missing): blocks and MiB per sequence, sequences in the budget."""
    from skipdecode.config import ModelConfig
    from skipdecode.kv_cache import num_blocks_for_budget
    from skipdecode.model_runner.models import kv_head_shape
    from skipdecode.model_runner.runner import ModelRunner
    from skipdecode.model_runner.weights import load_hf_config, resolve_model_path

    if args.input_len < 1 or args.output_len < 1 or args.budget_mib <= 0:
        raise ValueError("--input-len and --output-len must be >= 1, --budget-mib > 0")
    hf_config = load_hf_config(resolve_model_path(args.model))
    num_layers = hf_config.num_hidden_layers
    dtype = ModelConfig(dtype=args.dtype).torch_dtype
    per_block = ModelRunner.bytes_per_block(args.block_size, kv_head_shape(hf_config), dtype)
    budget_blocks = num_blocks_for_budget(int(args.budget_mib * MIB), per_block)
    rows = []
    for speedup in dict.fromkeys([1.0, *args.speedups]):
        schedule = skip_for(speedup).resolve(num_layers)
        blocks = kv_blocks_per_sequence(schedule, args.block_size, args.input_len, args.output_len)
        fits = max_concurrent_sequences(
            schedule, args.block_size, budget_blocks, args.input_len, args.output_len
        )
        rows.append(
            {
                "label": speedup_label(speedup),
                "target_speedup": speedup,
                "theoretical_speedup": schedule.theoretical_speedup(args.output_len),
                "depths": f"{schedule.max_depth}->{schedule.min_depth}",
                "schedule": {
                    "warmup_layers": schedule.warmup_layers,
                    "max_depth": schedule.max_depth,
                    "min_depth": schedule.min_depth,
                    "decay_tokens": schedule.decay_tokens,
                },
                "kv_blocks_per_seq": blocks,
                "kv_mib_per_seq": blocks * per_block / MIB,
                "max_concurrent_seqs": fits,
            }
        )
    for row in rows:
        row["kv_saving"] = 1 - row["kv_blocks_per_seq"] / rows[0]["kv_blocks_per_seq"]
        base = rows[0]["max_concurrent_seqs"]
        row["capacity_gain"] = row["max_concurrent_seqs"] / base if base else None
    results = {
        "num_layers": num_layers,
        "bytes_per_block": per_block,
        "budget_blocks": budget_blocks,
        "results": rows,
    }
    return write_results(args.output_json, "kv", vars(args), results)
