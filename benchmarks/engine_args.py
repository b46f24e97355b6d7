"""Engine flags shared by the offline bench commands (throughput, latency), and the engine."""

from __future__ import annotations

import argparse

from skipdecode.benchmarks.common import PromptSource, parse_list


def add_engine_args(parser: argparse.ArgumentParser, max_num_seqs: int = 64) -> None:
    """Model, engine and prompt-seed flags of the offline commands."""
    group = parser.add_argument_group("model and engine")
    group.add_argument(
        "--model", default=None, help="HF model directory or .gguf file (default: SmolLM2-135M)"
    )
    group.add_argument("--dtype", default="auto", help="auto (bf16) | bfloat16 | float16 | float32")
    group.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    group.add_argument(
        "--max-num-seqs", type=int, default=max_num_seqs, help="sequences running at once"
    )
    group.add_argument(
        "--max-num-batched-tokens", type=int, default=2048, help="tokens computed per step"
    )
    group.add_argument("--block-size", type=int, default=16, help="KV positions per block")
    group.add_argument(
        "--kv-cache-memory", type=float, default=1.0, help="KV pool size in GiB (CPU)"
    )
    group.add_argument("--seed", type=int, default=0, help="seed of the random prompts")
    # Here: keeps the module import light.
    from skipdecode.cli_args import add_adapter_args, add_quantization_args

    add_adapter_args(group)
    add_quantization_args(group)


def add_speedups_arg(parser: argparse.ArgumentParser, default: str = "1,2,3") -> None:
    """``--speedups``: target theoretical speedups, parsed to floats."""
    parser.add_argument(
        "--speedups",
        type=lambda text: parse_list(text, float),
        default=parse_list(default, float),
        help=f"target theoretical speedups, comma-separated; 1 = full depth (default {default})",
    )


def model_config(args: argparse.Namespace):
    """The ModelConfig the flags describe."""
    from skipdecode.config import ModelConfig
    from skipdecode.model_runner.quant import DEFAULT_GROUP_SIZE

    return ModelConfig(
        model=args.model,
        dtype=args.dtype,
        device=args.device,
        # Namespaces built by hand may lack these.
        adapter=getattr(args, "adapter", "auto"),
        quantization=getattr(args, "quantization", "auto"),
        quantization_group_size=getattr(args, "quantization_group_size", DEFAULT_GROUP_SIZE),
    )


def build_engine(
    args: argparse.Namespace,
    num_kv_blocks: int | None = None,
    max_num_seqs: int | None = None,
    loaded=None,
):
    """An Engine built from the flags (loads the model once for all runs of a command).

    ``loaded``: a model already loaded with ``load_model(model_config(args))``, reused.
    """
    from skipdecode.config import CacheConfig, EngineConfig
    from skipdecode.engine import Engine
    from skipdecode.scheduler import SchedulerConfig

    config = EngineConfig(
        model=model_config(args),
        cache=CacheConfig(
            block_size=args.block_size,
            kv_cache_memory_gib=args.kv_cache_memory,
            num_blocks=num_kv_blocks,
        ),
        scheduler=SchedulerConfig(
            max_num_seqs=max_num_seqs or args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
        ),
    )
    return Engine(config, loaded)


def skip_for(speedup: float):
    """The SkipConfig for a target speedup (1 resolves to full depth)."""
    from skipdecode.scheduler import SkipConfig

    return SkipConfig.for_speedup(speedup)


def engine_prompts(engine, num_prompts: int, input_len: int, seed: int) -> list[list[int]]:
    """Random prompts in the loaded model's vocabulary (the ids every bench tool draws)."""
    source = PromptSource.from_loaded(engine.hf_config, engine.tokenizer)
    return source.prompts(num_prompts, input_len, seed)
