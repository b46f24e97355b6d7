"""``skipdecode eval copy``: parser and entry point (registered by :mod:`training.cli_eval`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from skipdecode.training.cli import _add_schedule_args


def positive_int(text: str) -> int:
    """An integer >= 1 (argparse names the flag in its error)."""
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an integer (got {text!r})") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def add_eval_copy_parser(
    tasks, add_model_list_args: Callable[[argparse.ArgumentParser], None]
) -> argparse.ArgumentParser:
    """Register ``eval copy``; ``add_model_list_args`` adds ``--model/--label/--adapter``."""
    parser = tasks.add_parser(
        "copy",
        help="exact-span copy accuracy at each speedup (invented names, numbers, quotes)",
        description="Ask for spans no model can have memorized (invented names, numbers, code"
        " identifiers, random-word quotes, a name extracted from a passage) through the chat"
        " template, greedily at each target speedup, and score exact-span accuracy with 95%"
        " bootstrap intervals. A model with a skip_schedule.json (its own or its adapter's) uses"
        " its trained --decay-tokens/--warmup-layers. --ablate-layers adds the accuracy with"
        " each single layer removed (full depth, Hugging Face model).",
    )
    add_model_list_args(parser)
    parser.add_argument("--out", required=True, help="directory for JSON, markdown, generations")
    parser.add_argument("--items", type=positive_int, default=100, help="probe items")
    _add_schedule_args(parser, "1,2,3,4,5")
    parser.add_argument(
        "--max-tokens", type=positive_int, default=32, help="tokens generated per answer"
    )
    parser.add_argument("--seed", type=int, default=0, help="probe and bootstrap seed")
    parser.add_argument("--bootstrap", type=positive_int, default=1000, help="bootstrap resamples")
    parser.add_argument("--dtype", default="auto", help="engine dtype (auto = bf16)")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--ablate-layers",
        action="store_true",
        help="also: accuracy with each single layer removed (full depth, HF model, fp32)",
    )
    parser.add_argument(
        "--ablate-items",
        type=positive_int,
        default=50,
        help="probe items of the ablation (the first ones)",
    )
    parser.set_defaults(func=run_eval_copy)
    return parser


def run_eval_copy(args: argparse.Namespace) -> int:
    from skipdecode.training.cli_eval import model_specs
    from skipdecode.training.eval_copy import CopyEvalConfig, evaluate_copy
    from skipdecode.training.evaluate import ModelSpec

    config = CopyEvalConfig(
        models=tuple(ModelSpec(*spec) for spec in model_specs(args)),
        out_dir=args.out,
        num_items=args.items,
        speedups=args.speedups,
        max_tokens=args.max_tokens,
        decay_tokens=args.decay_tokens,
        warmup_layers=args.warmup_layers,
        dtype=args.dtype,
        device=args.device,
        seed=args.seed,
        num_resamples=args.bootstrap,
        ablate_layers=args.ablate_layers,
        ablate_items=args.ablate_items,
    )
    evaluate_copy(config)
    return 0
