"""Where a decode step's time goes (torch.profiler), and the matmul rate at the model's shapes.

The labels are attached from outside, only while profiling: forward hooks open and close a
``torch.profiler.record_function`` range around each attention block, MLP, norm, embedding and
LM head module, and the scheduler's ``schedule``/``update``, the runner's step metadata and the
sampler are wrapped for the run. Nothing in the serving path carries a label, so a run that is not
profiled pays nothing.

On CPU a range's time is its wall time on the calling thread. On CUDA it is the kernel time
launched inside it (``device_time_total``), and "other" also holds launch gaps and host syncs.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator

import torch
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from skipdecode.model_runner.quant_linear import Int4Linear, Int8Linear

PREFIX = "bench::"
MODEL_PARTS = ("embedding", "attention", "mlp", "norms", "lm_head")
HOST_PARTS = ("step_metadata", "sampling", "schedule", "update")
OTHER = "other"

BREAKDOWN_COLUMNS = [
    ("component", "component", "s"),
    ("ms_per_step", "ms/step", ".3f"),
    ("fraction", "share", ".1%"),
]
MATMUL_COLUMNS = [
    ("name", "matmul", "s"),
    ("shape", "[rows x in] @ [in x out]", "s"),
    ("count", "per step", "d"),
    ("gflops", "GFLOP/s", ".1f"),
]


def module_category(name: str) -> str | None:
    """Breakdown component of a module, from its (Hugging Face) name; None: not labelled."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "self_attn":
        return "attention"
    if leaf in ("mlp", "fc1", "fc2"):
        return "mlp"
    if leaf in ("lm_head", "project_out"):
        return "lm_head"
    if leaf.startswith("embed") or leaf == "project_in":
        return "embedding"
    if "norm" in leaf:
        return "norms"
    return None


@contextlib.contextmanager
def labelled(engine) -> Iterator[None]:
    """Label the engine's modules and host phases with record_function ranges, then unlabel."""
    from skipdecode.model_runner import ops
    from skipdecode.model_runner import runner as runner_module

    open_ranges: list[record_function] = []  # module calls nest, so one stack serves all

    def enter(label: str) -> None:
        open_ranges.append(record_function(label))
        open_ranges[-1].__enter__()

    def leave(*_) -> None:
        open_ranges.pop().__exit__(None, None, None)

    handles = []
    for name, module in engine.runner.model.named_modules():
        category = module_category(name)
        if category is not None:
            label = PREFIX + category
            handles.append(module.register_forward_pre_hook(lambda m, i, lb=label: enter(lb)))
            handles.append(module.register_forward_hook(leave))
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: [h.remove() for h in handles])
        targets = [
            (runner_module, "sort_by_start_layer", "step_metadata"),
            (runner_module, "build_step_context", "step_metadata"),
            (runner_module, "_runner_output", "sampling"),
            (engine.runner, "sampler", "sampling"),
            (engine.scheduler, "schedule", "schedule"),
            (engine.scheduler, "update", "update"),
        ]
        for owner, attr, label in targets:
            stack.enter_context(_wrapped(owner, attr, PREFIX + label))

        # With the CPU kernels, a layer's norms are kernel calls that bypass the norm modules'
        # hooks; without them (kernels=None) the modules are called and their hooks label them.
        def with_kernels(*args) -> bool:  # the ops' last argument is the kernel module
            return args[-1] is not None

        for attr in ("rms_norm", "add_rms_norm"):
            stack.enter_context(_wrapped(ops, attr, PREFIX + "norms", when=with_kernels))
        yield


@contextlib.contextmanager
def _wrapped(owner: object, attr: str, label: str, when=None) -> Iterator[None]:
    """Replace ``owner.attr`` by a call inside a ``label`` range (only the calls whose arguments
    ``when`` accepts, if given); restore it afterwards."""
    original = getattr(owner, attr)
    had_own = attr in vars(owner)

    def call(*args, **kwargs):
        if when is not None and not when(*args):
            return original(*args, **kwargs)
        with record_function(label):
            return original(*args, **kwargs)

    setattr(owner, attr, call)
    try:
        yield
    finally:
        if had_own:
            setattr(owner, attr, original)
        else:
            delattr(owner, attr)


@contextlib.contextmanager
def model_stubbed(engine) -> Iterator[None]:
    """Replace the model's layers and LM head by stand-ins that cost nothing (zeros of the
    hidden size; fixed random logits of the vocabulary size), so a step's time is its host
    work alone: scheduling, step metadata, sampling, update, stats."""
    model = engine.runner.model
    runner = engine.runner
    hidden_size = model.config.hidden_size
    generator = torch.Generator(device="cpu").manual_seed(0)
    bank: list[torch.Tensor] = []

    def forward(input_ids: torch.Tensor, ctx) -> torch.Tensor:
        return torch.zeros(
            input_ids.shape[0], hidden_size, dtype=runner.dtype, device=runner.device
        )

    def compute_logits(hidden: torch.Tensor) -> torch.Tensor:
        if not bank or bank[0].shape[0] < hidden.shape[0]:
            logits = torch.randn(hidden.shape[0], runner.vocab_size, generator=generator)
            bank[:] = [logits.to(runner.device, runner.dtype)]
        return bank[0][: hidden.shape[0]]

    with contextlib.ExitStack() as stack:
        for attr, stand_in in (("forward", forward), ("compute_logits", compute_logits)):
            had_own = attr in vars(model)
            original = getattr(model, attr)
            setattr(model, attr, stand_in)
            stack.callback(
                lambda a=attr, o=original, h=had_own: (
                    setattr(model, a, o) if h else delattr(model, a)
                )
            )
        yield


def profile_decode(
    engine, batch: int, context: int, num_steps: int, seed: int, unprofiled_step_ms: float
) -> dict:
    """Profile ``num_steps`` full-depth decode steps of ``batch`` sequences at ``context``."""
    from skipdecode.benchmarks.engine_args import skip_for
    from skipdecode.benchmarks.latency import start_decoding, stop_decoding

    is_cuda = engine.runner.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if is_cuda else [])
    start_decoding(engine, batch, context, skip_for(1.0), num_steps, seed)
    with labelled(engine), profile(activities=activities) as prof:
        for _ in range(num_steps):
            with record_function(PREFIX + "step"):
                engine.step_with_stats()
    stop_decoding(engine)
    cpu_us, device_us = _range_totals(prof)

    def ms(part: str, on_device: bool) -> float:
        totals = device_us if on_device else cpu_us
        return totals.get(PREFIX + part, 0.0) / 1e3 / num_steps

    step_ms = ms("step", False)
    parts = {p: ms(p, is_cuda) for p in MODEL_PARTS}
    parts.update({p: ms(p, is_cuda and p == "sampling") for p in HOST_PARTS})
    parts[OTHER] = max(step_ms - sum(parts.values()), 0.0)
    components = [
        {"component": name, "ms_per_step": value, "fraction": value / step_ms}
        for name, value in parts.items()
    ]
    components.append({"component": "step (profiled)", "ms_per_step": step_ms, "fraction": 1.0})
    return {
        "batch_size": batch,
        "context_len": context,
        "num_steps": num_steps,
        "device_times": is_cuda,
        "step_ms_profiled": step_ms,
        "step_ms_unprofiled": unprofiled_step_ms,
        "components": components,
    }


def _range_totals(prof: profile) -> tuple[dict[str, float], dict[str, float]]:
    """Per label: microseconds on the host, and of kernels launched inside (CUDA).

    Only the host-side range events count: on CUDA each label also appears as a device-side
    annotation event spanning the same kernels, which would count them twice.
    """
    cpu_us: dict[str, float] = defaultdict(float)
    device_us: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.name.startswith(PREFIX) and event.device_type == DeviceType.CPU:
            cpu_us[event.name] += event.cpu_time_total
            device_us[event.name] += event.device_time_total
    return cpu_us, device_us


def _is_linear(module: nn.Module) -> bool:
    """An ``nn.Linear`` or a weight-only quantized linear (``Int8Linear``, ``Int4Linear``)."""
    return isinstance(module, (nn.Linear, Int8Linear, Int4Linear))


def linear_shapes(model: nn.Module) -> list[tuple[str, int, int, int]]:
    """(name, in, out, calls per full-depth token) of every distinct matmul of the model."""
    num_layers = model.num_layers
    shapes: dict[tuple[str, int, int], int] = {}
    for name, module in model.named_modules():
        if not _is_linear(module):
            continue
        parts = name.split(".")
        in_layer = "layers" in parts
        if in_layer and parts[parts.index("layers") + 1] != "0":
            continue  # layers share their shapes; layer 0 stands for all of them
        key = (parts[-1], module.in_features, module.out_features)
        shapes[key] = shapes.get(key, 0) + (num_layers if in_layer else 1)
    return [(name, n_in, n_out, count) for (name, n_in, n_out), count in shapes.items()]


def _seconds_per_matmul(x: torch.Tensor, weight: torch.Tensor, min_seconds: float) -> float:
    """Mean seconds of ``x @ weight.T`` (the nn.Linear layout), repeated for ``min_seconds``."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    for _ in range(3):
        torch.matmul(x, weight.t())
    sync()
    count, start = 0, time.perf_counter()
    while True:
        for _ in range(10):
            torch.matmul(x, weight.t())
        count += 10
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / count


@torch.inference_mode()
def matmul_rates(model: nn.Module, batch: int, min_seconds: float = 0.2) -> dict:
    """GFLOP/s of torch.matmul at each of the model's shapes with ``batch`` rows, in its dtype.

    ``model_mix_gflops``: the FLOPs of one full-depth token per row through every matmul,
    divided by the time those matmuls take at these rates (what a step made only of matmuls
    would reach). ``best_shape_gflops``: the fastest single shape.
    """
    param = next(model.parameters())
    rows, total_flops, total_seconds = [], 0.0, 0.0
    for name, n_in, n_out, count in linear_shapes(model):
        x = torch.randn(batch, n_in, dtype=param.dtype, device=param.device)
        weight = torch.randn(n_out, n_in, dtype=param.dtype, device=param.device)
        seconds = _seconds_per_matmul(x, weight, min_seconds)
        flops = 2.0 * batch * n_in * n_out
        total_flops += flops * count
        total_seconds += seconds * count
        rows.append(
            {
                "name": name,
                "shape": f"[{batch} x {n_in}] @ [{n_in} x {n_out}]",
                "count": count,
                "gflops": flops / seconds / 1e9,
            }
        )
    return {
        "batch_size": batch,
        "dtype": str(param.dtype).removeprefix("torch."),
        "shapes": rows,
        "model_mix_gflops": total_flops / total_seconds / 1e9,
        "best_shape_gflops": max(r["gflops"] for r in rows),
    }
