"""The ``skipdecode`` command: ``generate`` one prompt, or ``serve`` the OpenAI-compatible API."""

from __future__ import annotations

import argparse
import sys
import time

from skipdecode import cli_args
from skipdecode.benchmarks.cli import add_bench_parser
from skipdecode.training.cli import add_train_parser
from skipdecode.training.cli_eval import add_eval_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skipdecode",
        description="LLM serving with SkipDecode: cheaper decoding by skipping lower layers.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser(
        "generate",
        help="generate text for one prompt",
        description="Generate for one prompt and print the text, depths and speedup.",
    )
    gen.add_argument("prompt", help="the prompt text")
    gen.add_argument(
        "--no-chat",
        action="store_true",
        help="send the prompt as raw text instead of through the model's chat template",
    )
    cli_args.add_engine_args(gen)
    cli_args.add_sampling_args(gen)
    gen.set_defaults(func=run_generate)
    serve = commands.add_parser(
        "serve",
        help="serve the OpenAI-compatible HTTP API",
        description="Serve /v1/completions, /v1/chat/completions and friends (docs/api.md).",
    )
    cli_args.add_engine_args(serve)
    cli_args.add_server_args(serve)
    cli_args.add_ray_args(serve)
    serve.set_defaults(func=run_serve)
    add_bench_parser(commands)
    add_train_parser(commands)
    add_eval_parser(commands)
    return parser


def run_serve(args: argparse.Namespace) -> int:
    engine_config, server_config = cli_args.engine_config(args), cli_args.server_config(args)
    ray_config = cli_args.ray_config(args)
    if ray_config is None:
        from skipdecode.server.launcher import run_server

        return run_server(engine_config, server_config)
    try:
        from skipdecode.server.ray_serve import run_ray_server
    except ImportError as exc:
        raise SystemExit(
            f"serving with replicas needs Ray Serve ({exc}): pip install 'skipdecode[ray]'"
        ) from None
    return run_ray_server(engine_config, server_config, ray_config)


def run_generate(args: argparse.Namespace) -> int:
    from skipdecode.engine import Engine

    engine = Engine(cli_args.engine_config(args))
    prompt: str | list[int] = args.prompt
    tokenizer = engine.tokenizer
    if not args.no_chat and tokenizer is not None and tokenizer.chat_template:
        messages = [{"role": "user", "content": args.prompt}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    engine.add_request(prompt, cli_args.sampling_params(args), request_id="cli")
    start, shown, first_token_at, final = time.perf_counter(), 0, None, None
    while engine.has_unfinished_requests():
        for out in engine.step():
            first_token_at = first_token_at or time.perf_counter()
            sys.stdout.write(out.text[shown:])
            sys.stdout.flush()
            shown, final = len(out.text), out
    end = time.perf_counter()
    sys.stdout.write("\n")
    if final is not None:
        decode_s = end - (first_token_at or end)
        rate = (final.num_generated_tokens - 1) / decode_s if decode_s > 0 else float("nan")
        print(
            f"[{final.num_generated_tokens} tokens, finish={final.finish_reason},"
            f" depths {final.depths[0]}->{final.depths[-1]} of {final.num_layers} layers,"
            f" theoretical speedup {final.theoretical_speedup:.2f}x,"
            f" prefill {(first_token_at or end) - start:.2f}s, decode {rate:.1f} tok/s]",
            file=sys.stderr,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        parser.exit(2, f"skipdecode: error: {exc}\n")


if __name__ == "__main__":
    sys.exit(main())
