"""``skipdecode train`` and ``skipdecode eval e2e``: parsers and entry points.

Building the parsers imports no transformers, peft or sacrebleu: those load when a command runs,
so the other ``skipdecode`` commands start as quickly as before.
"""

from __future__ import annotations

import argparse

from skipdecode.training import e2e


def speedup_list(text: str) -> tuple[float, ...]:
    """``"1,2,3"`` -> (1.0, 2.0, 3.0)."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,2,3 (got {text!r})") from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"speedups must be numbers >= 1 (got {text!r})")
    return values


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", default=e2e.DEFAULT_E2E_CSV, help="CSV with columns mr,ref")
    group.add_argument(
        "--val-percent",
        type=int,
        default=e2e.DEFAULT_VAL_PERCENT,
        help="MRs whose md5 %% 100 is below this are validation (default 15)",
    )


def _add_schedule_args(parser: argparse.ArgumentParser, speedups: str) -> None:
    group = parser.add_argument_group("SkipDecode schedule presets")
    group.add_argument(
        "--speedups",
        type=speedup_list,
        default=speedup_list(speedups),
        help=f"target theoretical speedups, comma-separated (default {speedups})",
    )
    group.add_argument(
        "--decay-tokens",
        type=int,
        default=e2e.DEFAULT_DECAY_TOKENS,
        help="tokens over which the depth decays; presets hit their target at N = this",
    )
    group.add_argument("--warmup-layers", type=int, default=1, help="layers every token runs")


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train`` on the ``skipdecode`` subcommands."""
    parser = subparsers.add_parser(
        "train",
        help="skip-aware fine-tuning on E2E (full or LoRA)",
        description="Fine-tune with the SkipDecode schedule applied under teacher forcing;"
        " writes an HF model directory with skip_schedule.json that the engine serves by default.",
    )
    parser.add_argument("--model", default=None, help="HF dir or .gguf (default: SmolLM2-135M)")
    parser.add_argument("--out", required=True, help="output directory (checkpoint + state)")
    parser.add_argument("--method", choices=["full", "lora"], default="full")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    _add_data_args(parser)
    parser.add_argument("--max-rows", type=int, default=None, help="use only the first rows")
    _add_schedule_args(parser, "1")
    parser.add_argument(
        "--default-speedup",
        type=float,
        default=None,
        help="schedule the checkpoint serves by default (default: the largest of --speedups)",
    )
    parser.add_argument("--kl-weight", type=float, default=0.0, help="self-distillation weight")
    parser.add_argument(
        "--teacher", default=None, help="full-depth teacher for the KL term (default: --model)"
    )
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=None, help="default 1e-4 full, 1e-3 LoRA")
    parser.add_argument("--lr-warmup-steps", type=int, default=10)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="autocast")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=50, help="steps between saved states")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out (or skip it if finished)"
    )
    parser.set_defaults(func=run_train)
    return parser


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``eval`` (with its ``e2e`` task) on the ``skipdecode`` subcommands."""
    parser = subparsers.add_parser("eval", help="quality at 1x..5x speedup (E2E)")
    tasks = parser.add_subparsers(dest="task", required=True)
    e2e_parser = tasks.add_parser(
        "e2e",
        help="BLEU / ROUGE-L on E2E at each speedup",
        description="Generate greedily with the engine at each target speedup and score"
        " multi-reference BLEU and ROUGE-L (references grouped by MR), with bootstrap CIs.",
    )
    e2e_parser.add_argument(
        "--model",
        action="append",
        required=True,
        help="HF dir or .gguf to evaluate (repeatable: one table, one line per model)",
    )
    e2e_parser.add_argument(
        "--label", action="append", default=None, help="name per --model (default: the path)"
    )
    e2e_parser.add_argument("--out", required=True, help="directory for JSON, markdown, PNG")
    _add_data_args(e2e_parser)
    e2e_parser.add_argument("--split", choices=["val", "train", "all"], default="val")
    _add_schedule_args(e2e_parser, "1,2,3,4,5")
    e2e_parser.add_argument("--max-tokens", type=int, default=80)
    e2e_parser.add_argument("--max-mrs", type=int, default=None, help="only the first MRs")
    e2e_parser.add_argument("--dtype", default="auto", help="engine dtype (auto = bf16)")
    e2e_parser.add_argument("--device", default="auto")
    e2e_parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    e2e_parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    e2e_parser.set_defaults(func=run_eval_e2e)
    return parser


def run_train(args: argparse.Namespace) -> int:
    from skipdecode.training.train import TrainConfig, train

    config = TrainConfig(
        out_dir=args.out,
        model=args.model,
        data=args.data,
        val_percent=args.val_percent,
        max_rows=args.max_rows,
        method=args.method,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        speedups=args.speedups,
        decay_tokens=args.decay_tokens,
        warmup_layers=args.warmup_layers,
        default_speedup=args.default_speedup,
        kl_weight=args.kl_weight,
        teacher=args.teacher,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_warmup_steps=args.lr_warmup_steps,
        dtype=args.dtype,
        device=args.device,
        seed=args.seed,
        save_every=args.save_every,
        resume=args.resume,
    )
    summary = train(config)
    print(
        f"trained {summary['steps']} steps ({summary['epochs']:.2f} epochs) in"
        f" {summary['wall_seconds']:.0f}s, {summary['tokens_per_second']:.0f} tokens/s;"
        f" checkpoint in {args.out}"
    )
    return 0


def run_eval_e2e(args: argparse.Namespace) -> int:
    from skipdecode.training.evaluate import EvalConfig, ModelSpec, evaluate

    labels = args.label or []
    if labels and len(labels) != len(args.model):
        raise ValueError(f"got {len(labels)} --label for {len(args.model)} --model")
    models = tuple(
        ModelSpec(label=labels[i] if labels else path, path=path)
        for i, path in enumerate(args.model)
    )
    config = EvalConfig(
        models=models,
        out_dir=args.out,
        data=args.data,
        split=args.split,
        val_percent=args.val_percent,
        speedups=args.speedups,
        decay_tokens=args.decay_tokens,
        warmup_layers=args.warmup_layers,
        max_tokens=args.max_tokens,
        max_mrs=args.max_mrs,
        dtype=args.dtype,
        device=args.device,
        num_resamples=args.bootstrap,
        seed=args.seed,
    )
    evaluate(config)
    return 0
