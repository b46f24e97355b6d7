"""``skipdecode bench hf``: Hugging Face ``transformers`` ``generate()``, the naive anchor.

The same random token-id prompts as the other bench commands (same ``--seed``), in static
batches of ``--batch-size`` (all prompts have the same length, so the padding mask is all ones),
greedy, exactly ``--output-len`` new tokens each (``min_new_tokens`` keeps EOS away). A GGUF file
is loaded with ``from_pretrained(dir, gguf_file=name)`` (transformers decides whether the weights
stay quantized), in the same dtype names as ours (``auto`` is bf16). One short warm-up batch runs
first.
"""

from __future__ import annotations

import argparse
import os
import time

from skipdecode.benchmarks.common import PromptSource, format_table, write_results

WARMUP_MAX_TOKENS = 4

COLUMNS = [
    ("label", "system", "s"),
    ("batch_size", "batch", "d"),
    ("elapsed_s", "time s", ".2f"),
    ("requests_per_s", "req/s", ".2f"),
    ("output_tokens_per_s", "out tok/s", ".1f"),
    ("total_tokens_per_s", "total tok/s", ".1f"),
]


def add_args(parser: argparse.ArgumentParser) -> None:
    """Register the command's flags and entry point on ``parser``."""
    parser.add_argument(
        "--model", default=None, help="HF model directory or .gguf file (default: SmolLM2-135M)"
    )
    parser.add_argument("--num-prompts", type=int, default=16, help="requests in all")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generate() call")
    parser.add_argument("--input-len", type=int, default=128, help="prompt tokens per request")
    parser.add_argument("--output-len", type=int, default=128, help="tokens generated per request")
    parser.add_argument("--dtype", default="auto", help="auto (bf16) | bfloat16 | float32 | ...")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random prompts")
    parser.add_argument("--output-json", default=None, help="write the results here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the command, print its tables; returns the exit code."""
    payload = bench_hf(args)
    print(format_table(payload["results"], COLUMNS))
    return 0


def load_hf_model(model: str | None, dtype, device):
    """transformers' own model for a directory or a .gguf file."""
    from transformers import AutoModelForCausalLM

    from skipdecode.model_runner.weights import resolve_model_path

    path = resolve_model_path(model)
    if os.path.isdir(path):
        loaded = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    else:
        directory, name = os.path.split(os.path.abspath(path))
        loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=dtype)
    return loaded.to(device).eval()


def bench_hf(args: argparse.Namespace) -> dict:
    """Generate for every batch, timed together after a warm-up; return the payload."""
    import torch

    from skipdecode.config import ModelConfig

    if min(args.num_prompts, args.batch_size, args.input_len, args.output_len) < 1:
        raise ValueError("--num-prompts, --batch-size, --input-len, --output-len must be >= 1")
    config = ModelConfig(model=args.model, dtype=args.dtype, device=args.device)
    model = load_hf_model(args.model, config.torch_dtype, config.torch_device)
    prompts = PromptSource.from_model(args.model).prompts(
        args.num_prompts, args.input_len, args.seed
    )
    batches = [prompts[i : i + args.batch_size] for i in range(0, len(prompts), args.batch_size)]
    _generate(model, batches[0], WARMUP_MAX_TOKENS, config.torch_device)
    start = time.perf_counter()
    num_output = sum(_generate(model, b, args.output_len, config.torch_device) for b in batches)
    if config.torch_device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    num_prompt = args.num_prompts * args.input_len
    row = {
        "label": "hf generate",
        "batch_size": args.batch_size,
        "num_requests": args.num_prompts,
        "num_prompt_tokens": num_prompt,
        "num_output_tokens": num_output,
        "num_output_tokens_expected": args.num_prompts * args.output_len,
        "elapsed_s": elapsed,
        "requests_per_s": args.num_prompts / elapsed,
        "output_tokens_per_s": num_output / elapsed,
        "total_tokens_per_s": (num_output + num_prompt) / elapsed,
        "dtype": str(config.torch_dtype).removeprefix("torch."),
    }
    return write_results(args.output_json, "hf", vars(args), {"results": [row]})


def _generate(model, batch: list[list[int]], num_new: int, device) -> int:
    """Greedy ``generate()`` of exactly ``num_new`` tokens per prompt; returns tokens made."""
    import torch

    input_ids = torch.tensor(batch, device=device)  # [B, input_len], equal lengths: no padding
    eos = model.generation_config.eos_token_id
    pad_id = (eos[0] if isinstance(eos, (list, tuple)) else eos) or 0
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=num_new,
            min_new_tokens=num_new,
            do_sample=False,
            pad_token_id=pad_id,
        )
    return int((out.shape[1] - input_ids.shape[1]) * out.shape[0])
