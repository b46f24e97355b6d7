"""Build a model from a checkpoint: registry lookup, then a short generic weight loader."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

from skipdecode.model_runner.adapter import Adapter, merge_weights
from skipdecode.model_runner.cpu_packing import can_pack, fuse_projections, pack_linears
from skipdecode.model_runner.gated_adapter import attach_gated_adapter, find_gated_targets
from skipdecode.model_runner.models import model_class_for
from skipdecode.model_runner.quant import DEFAULT_GROUP_SIZE, QuantizedWeight
from skipdecode.model_runner.quant_linear import quantize_model
from skipdecode.model_runner.weights import iter_weights

logger = logging.getLogger(__name__)

# Checkpoint tensors that carry no parameters of ours.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def build_model(
    config,
    path: str | None,
    dtype: torch.dtype,
    device: torch.device,
    adapter: Adapter | None = None,
    quantization: str = "none",
    group_size: int = DEFAULT_GROUP_SIZE,
) -> nn.Module:
    """Instantiate ``config``'s architecture and load weights from ``path`` (None: random).

    An ``adapter`` with ``apply_to == "all"`` is merged into the checkpoint's tensors as they
    stream in, in float32 before the copy into ``dtype`` and before the CPU fusing/packing
    (which then see merged weights). One with ``apply_to == "skipping"`` leaves the weights
    unmerged: after the fusing/packing, its linears are wrapped to add the update on skipping
    rows only (gated_adapter.py; the gate is ``model.adapter_gate``), with merged copies for
    all-skipping layers where :func:`merges_gated` says so.

    ``quantization`` (resolved, see loading.resolve_quantization): "none"; "int8" or "int4"
    (``group_size`` columns per scale) quantize every linear after loading and fusing;
    "gguf" serves a GGUF file's Q4_0/Q4_1/Q8_0 blocks as stored and leaves the rest float.
    """
    is_merged = adapter is not None and adapter.apply_to == "all"
    if adapter is not None and path is None:
        raise ValueError("an adapter needs checkpoint weights to merge into (not random ones)")
    if is_merged and quantization == "gguf":
        raise ValueError("a merged adapter changes the weights: GGUF blocks cannot serve them")
    model_cls = model_class_for(config)
    with torch.device("meta"):
        model = model_cls(config)
    model = model.to_empty(device=device).to(dtype)
    model.tie_weights()  # moving off the meta device unties shared parameters
    stored: dict[str, QuantizedWeight] = {}
    if path is None:
        _init_random(model)
    else:
        weights = iter_weights(path, keep_blocks=quantization == "gguf")
        stored = load_weights(model, merge_weights(weights, adapter) if is_merged else weights)
    _rebuild_buffers(model, config, device, dtype)
    is_gated = adapter is not None and adapter.apply_to == "skipping"
    # Resolved by Hugging Face name before fusing removes q_proj & co.
    gated_targets = find_gated_targets(model, adapter) if is_gated else []
    is_quantized = quantization != "none"
    if can_pack(model) or is_quantized:
        fuse_projections(model, stored)
    if is_quantized:
        count = quantize_model(model, quantization, group_size, stored)
        logger.info("quantization %s: %d linear(s) quantized", quantization, count)
    if can_pack(model):
        pack_linears(model)  # the linears left float
    if is_gated:
        attach_gated_adapter(model, gated_targets, adapter.scale, merge=merges_gated(device, dtype))
    return model.eval()


def merges_gated(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a gated adapter also keeps merged copies of its linears (for steps where every
    row skips): in reduced precision on CPU, where the update's three small matmuls per linear
    cost a third of a one-stream skipping step. In float32 (the exactness tests' dtype) the
    update is always added to the base's output, as the slow reference does."""
    return device.type == "cpu" and dtype != torch.float32


def load_weights(
    model: nn.Module, weights: Iterable[tuple[str, torch.Tensor | QuantizedWeight]]
) -> dict[str, QuantizedWeight]:
    """Copy checkpoint tensors into the model by Hugging Face name; fail loudly on any mismatch.

    A QuantizedWeight (GGUF blocks kept as stored) meant for a linear is not copied: it is
    returned under the linear's weight name, for quantize_model, and that float parameter stays
    unset. One meant for another parameter (an embedding) is dequantized into it; a linear tied
    to that parameter (the LM head) is returned with the blocks too.
    """
    params = dict(model.named_parameters())  # tied weights appear once, under their first name
    tied_aliases = _tied_aliases(model)
    linear_weights = {f"{n}.weight" for n, m in model.named_modules() if type(m) is nn.Linear}
    stored: dict[str, QuantizedWeight] = {}
    loaded: set[str] = set()
    for name, tensor in weights:
        name = _normalize(name, params)
        name = tied_aliases.get(name, name)
        if name.endswith(_IGNORED_SUFFIXES):
            continue
        if name not in params:
            raise ValueError(f"checkpoint tensor {name!r} has no matching model parameter")
        param = params[name]
        if tuple(param.shape) != tuple(tensor.shape):
            raise ValueError(
                f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)},"
                f" the model expects {tuple(param.shape)}"
            )
        if isinstance(tensor, QuantizedWeight):
            holders = [name, *(a for a, first in tied_aliases.items() if first == name)]
            stored.update((h, tensor) for h in holders if h in linear_weights)
            tensor = None if name in linear_weights else tensor.dequantize()
        if tensor is not None:
            with torch.no_grad():
                param.copy_(tensor)
        loaded.add(name)
    missing = sorted(set(params) - loaded)
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(f"checkpoint is missing {len(missing)} tensor(s): {shown}")
    return stored


def _normalize(name: str, params: dict) -> str:
    # Some OPT checkpoints omit the "model." prefix ("decoder.layers.0...").
    if name not in params and f"model.{name}" in params:
        return f"model.{name}"
    return name


def _tied_aliases(model: nn.Module) -> dict[str, str]:
    """Map the second name of each tied parameter (e.g. lm_head.weight) to its first name."""
    first_name: dict[int, str] = {}
    aliases = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first_name:
            aliases[name] = first_name[id(param)]
        else:
            first_name[id(param)] = name
    return aliases


def _init_random(model: nn.Module) -> None:
    # Small normal weights, unit norms: a well-behaved random model for tests and benchmarks.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.fill_(1.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                values = torch.randn(param.shape, generator=generator) * 0.02
                param.copy_(values.to(param.dtype))


def _rebuild_buffers(model: nn.Module, config, device: torch.device, dtype: torch.dtype) -> None:
    # Buffers (RoPE tables) were created on the meta device; recompute them for real.
    for module in model.modules():
        if hasattr(module, "rebuild"):
            module.rebuild(config, device, dtype)
