"""``skipdecode eval e2e`` and ``skipdecode eval chat``: parsers and entry points."""

from __future__ import annotations

import argparse

from skipdecode import datasets
from skipdecode.config import QUANTIZATIONS
from skipdecode.training import chat, e2e
from skipdecode.training.cli import _add_data_args, _add_schedule_args, speedup_list
from skipdecode.training.cli_eval_copy import add_eval_copy_parser


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``eval`` (with its ``e2e`` and ``chat`` tasks) on the ``skipdecode`` subcommands."""
    parser = subparsers.add_parser("eval", help="quality at 1x..5x speedup (E2E, chat, copy)")
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
    e2e_parser.add_argument(
        "--adapter",
        action="append",
        default=None,
        help="adapter per --model: a directory, 'shipped' or 'none' (default: none)",
    )
    e2e_parser.add_argument("--out", required=True, help="directory for JSON, markdown, PNG")
    _add_data_args(e2e_parser)
    e2e_parser.add_argument("--split", choices=["val", "train", "all"], default="val")
    e2e_parser.add_argument(
        "--no-fresh",
        dest="fresh",
        action="store_false",
        help="do not score the validation MRs again with invented names (the fresh group)",
    )
    _add_schedule_args(e2e_parser, "1,2,3,4,5")
    e2e_parser.add_argument("--max-tokens", type=int, default=80)
    e2e_parser.add_argument("--max-mrs", type=int, default=None, help="only the first MRs")
    e2e_parser.add_argument("--dtype", default="auto", help="engine dtype (auto = bf16)")
    e2e_parser.add_argument(
        "--quantization",
        default="auto",
        choices=QUANTIZATIONS,
        help="weights as in serve (auto: a GGUF's blocks as stored; none: float)",
    )
    e2e_parser.add_argument("--device", default="auto")
    e2e_parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    e2e_parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    e2e_parser.set_defaults(func=run_eval_e2e)
    add_eval_chat_parser(tasks)
    add_eval_copy_parser(tasks, _add_model_list_args)
    return parser


def _add_model_list_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help="HF dir or .gguf (repeatable; 'default' = the default GGUF)",
    )
    parser.add_argument("--label", action="append", default=None, help="name per --model")
    parser.add_argument(
        "--adapter",
        action="append",
        default=None,
        help="adapter per --model: a directory, 'shipped' (the packaged skip-aware adapter) or"
        " 'none' (default: none for every model)",
    )


def add_eval_chat_parser(tasks) -> argparse.ArgumentParser:
    """Register ``eval chat``."""
    parser = tasks.add_parser(
        "chat",
        help="held-out chat quality at each speedup (perplexity, agreement, repetition)",
        description="On held-out chat conversations: teacher-forced perplexity of the data's"
        " answers at each speedup's depths, and greedy answers compared with the first model's"
        " full-depth answers (ROUGE-L, first differing token), repeated 4-grams, theoretical"
        " speedup and tokens/s; 95%% bootstrap intervals; JSON, markdown, PNG, side by side.",
    )
    _add_model_list_args(parser)
    parser.add_argument("--out", required=True, help="directory for the reports (resumable)")
    parser.add_argument("--data", default="sharegpt", help="sharegpt, a .jsonl or a .json")
    parser.add_argument("--split", choices=["train", "val", "test"], default="test")
    parser.add_argument("--val-percent", type=int, default=datasets.DEFAULT_VAL_PERCENT)
    parser.add_argument("--test-percent", type=int, default=datasets.DEFAULT_TEST_PERCENT)
    parser.add_argument("--max-conversations", type=int, default=None)
    parser.add_argument("--speedups", type=speedup_list, default=speedup_list("1,2,3,4,5"))
    parser.add_argument(
        "--decay-tokens", type=int, default=None, help="default: the model's preset family"
    )
    parser.add_argument(
        "--warmup-layers", type=int, default=None, help="default: the model's preset family"
    )
    parser.add_argument("--max-prompt-tokens", type=int, default=chat.DEFAULT_MAX_PROMPT_TOKENS)
    parser.add_argument(
        "--max-answer-tokens", type=int, default=64, help="answer tokens scored by perplexity"
    )
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens generated per answer")
    parser.add_argument("--batch-size", type=int, default=16, help="perplexity batch")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run_eval_chat)
    return parser


def model_specs(args: argparse.Namespace) -> list[tuple[str, str | None, str | None]]:
    """(label, path or None, adapter) per ``--model``; labels default to the path."""
    paths = args.model or ["default"]
    for name, values in (("--label", args.label), ("--adapter", args.adapter)):
        if values and len(values) != len(paths):
            raise ValueError(f"got {len(values)} {name} for {len(paths)} --model")
    specs = []
    for i, path in enumerate(paths):
        adapter = args.adapter[i] if args.adapter else "none"
        if adapter == "shipped":
            from skipdecode.model_runner.adapter import shipped_adapter_path

            adapter = shipped_adapter_path()
            if adapter is None:
                raise ValueError("--adapter shipped: the package holds no shipped adapter")
        label = args.label[i] if args.label else path
        specs.append((label, None if path == "default" else path, adapter))
    return specs


def run_eval_chat(args: argparse.Namespace) -> int:
    from skipdecode.training.eval_chat import ChatEvalConfig, ChatModelSpec, evaluate_chat

    config = ChatEvalConfig(
        models=tuple(ChatModelSpec(*spec) for spec in model_specs(args)),
        out_dir=args.out,
        data=args.data,
        split=args.split,
        val_percent=args.val_percent,
        test_percent=args.test_percent,
        max_conversations=args.max_conversations,
        speedups=args.speedups,
        decay_tokens=args.decay_tokens,
        warmup_layers=args.warmup_layers,
        max_prompt_tokens=args.max_prompt_tokens,
        max_answer_tokens=args.max_answer_tokens,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
        num_resamples=args.bootstrap,
        seed=args.seed,
    )
    evaluate_chat(config)
    return 0


def run_eval_e2e(args: argparse.Namespace) -> int:
    from skipdecode.training.evaluate import EvalConfig, ModelSpec, evaluate

    models = tuple(ModelSpec(*spec) for spec in model_specs(args))
    config = EvalConfig(
        models=models,
        out_dir=args.out,
        data=args.data,
        split=args.split,
        val_percent=e2e.DEFAULT_VAL_PERCENT if args.val_percent is None else args.val_percent,
        split_by=args.split_by,
        name_val_percent=args.name_val_percent,
        fresh=args.fresh,
        speedups=args.speedups,
        decay_tokens=args.decay_tokens,
        warmup_layers=args.warmup_layers,
        max_tokens=args.max_tokens,
        max_mrs=args.max_mrs,
        dtype=args.dtype,
        quantization=args.quantization,
        device=args.device,
        num_resamples=args.bootstrap,
        seed=args.seed,
    )
    evaluate(config)
    return 0
