"""Gated LoRA: an adapter that changes only the tokens that skip layers (``apply_to: "skipping"``).

A row of a step whose depth ``D`` is below the layer count ``L`` gets
``base(x) + scale * (x @ A.T) @ B.T`` in every adapted linear; a full-depth row (every prompt
token, generated tokens at ``D == L``) gets exactly ``base(x)``. So the model served at 1x is the
base model bit for bit, and skipping tokens get the skip-aware correction.

Applied from outside, like the CPU packing: :func:`find_gated_targets` resolves the adapter's
Hugging Face names on the plain model, the loader fuses and packs as usual, then
:func:`attach_gated_adapter` wraps each adapted linear (or fused linear) in a
:class:`GatedLoRALinear`. One :class:`AdapterGate` per model (``model.adapter_gate``) says which
rows of each layer are gated; the runner sets it once per step, on the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from skipdecode.model_runner.adapter import Adapter
from skipdecode.model_runner.context import StepLayout, flatten_ints
from skipdecode.model_runner.cpu_packing import FUSIONS
from skipdecode.model_runner.lora_merge import merged_linear

# Per layer: None (no gated row runs it), an int k (the gated rows are the running rows [k, n)),
# or a [num_gated] index tensor into the running rows.
GatedRows = int | torch.Tensor | None

# Gated rows up to which a bf16/fp16 CPU model computes the LoRA update in fp32 (faster there).
FP32_UPDATE_ROWS = 4


class AdapterGate:
    """Which of the rows running each layer get the LoRA update in the current step.

    One per model, shared by its :class:`GatedLoRALinear` modules; owned by the model and set by
    the runner once per step (:meth:`set_step`) from host-side facts, so the layer loop makes no
    host-device sync. ``layer_rows`` is None when no row of the step skips: then the adapter
    computes nothing at all.
    """

    def __init__(self, num_layers: int, device: torch.device) -> None:
        self.num_layers = num_layers
        self.device = device
        self.layer_rows: list[GatedRows] | None = None  # [L] while some row of the step skips

    def set_step(
        self, depths: Sequence[Sequence[int]], warmup_layers: Sequence[int], layout: StepLayout
    ) -> None:
        """Gate the rows of depth < L, in the depth-sorted row order of ``layout``.

        ``depths[i]`` and ``warmup_layers[i]`` are scheduled sequence ``i``'s, as given to
        ``build_step_context``: layer ``l`` runs rows ``[0, num_tokens[l])`` of the sorted order,
        or (requests with different warm-up counts) the ascending rows where ``runs[l]`` holds.
        """
        num_layers = self.num_layers
        lengths = [len(d) for d in depths]
        row_depths = flatten_ints(depths)[layout.order]
        is_gated = row_depths < num_layers  # [N] per sorted row
        if not is_gated.any():
            self.layer_rows = None
            return
        warmup = np.repeat(np.asarray(warmup_layers, dtype=np.int64), lengths)[layout.order]
        layers = np.arange(num_layers)[:, None]
        runs = (layers < warmup) | (layers >= num_layers - (row_depths - warmup))  # [L, N]
        prefix_rows = _prefix_rows(runs, is_gated)
        self.layer_rows = (
            prefix_rows if prefix_rows is not None else self._indexed_rows(runs, is_gated)
        )

    def _indexed_rows(self, runs: np.ndarray, is_gated: np.ndarray) -> list[GatedRows]:
        # General case: per layer, the gated rows' places among the rows that run it.
        shared: dict[bytes, torch.Tensor] = {}  # layers with the same places share one tensor
        layer_rows: list[GatedRows] = []
        for layer_runs in runs:
            running = np.flatnonzero(layer_runs)
            places = np.flatnonzero(is_gated[running])
            if len(places) == 0:
                layer_rows.append(None)
            elif places[0] == len(running) - len(places):  # a tail: a slice, no index tensor
                layer_rows.append(int(places[0]))
            else:
                key = places.tobytes()
                if key not in shared:
                    shared[key] = torch.from_numpy(places).to(self.device)
                layer_rows.append(shared[key])
        return layer_rows


def _prefix_rows(runs: np.ndarray, is_gated: np.ndarray) -> list[GatedRows] | None:
    """The common case, when the full-depth rows are a prefix ``[0, k)`` of the sorted rows:
    they run every layer, so they are the first ``k`` rows of every layer's running rows
    (prefix or ``plan.rows``), and layer ``l`` gates the rest, ``[k, num_tokens[l])``. None
    when the full-depth rows are not a prefix (a full-depth row with a larger warm-up count
    sorted after a skipping one)."""
    num_full = int(np.argmax(is_gated))  # first gated row
    if not is_gated[num_full:].all():
        return None
    return [num_full if n > num_full else None for n in runs.sum(axis=1).tolist()]


class GatedLoRALinear(nn.Module):
    """``base(x)``, plus ``(x @ A.T) @ B.T`` on the rows the gate names for this layer.

    ``base`` is an ``nn.Linear`` (or a packed/fused one); ``lora_a`` [R, in] and ``lora_b``
    [out, R] already carry the LoRA scale. A fused linear gets the parts' A matrices stacked
    and a block-diagonal B, so its update is two matmuls whatever the number of parts.

    The update's two matmuls are tiny, so their cost is the kernels' fixed overhead: on CPU a
    bf16 matmul of a few rows costs 20-45 us against 3-10 us in fp32 (oneDNN against MKL's
    small-matrix path), which at one stream made the adapter a third of a skipping step. Up to
    :data:`FP32_UPDATE_ROWS` gated rows of a reduced-precision CPU model therefore compute the
    update in fp32 (from fp32 copies of A and B) and round it once when it is added.
    """

    def __init__(
        self,
        base: nn.Module,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        layer: int,
        gate: AdapterGate,
    ) -> None:
        super().__init__()
        self.base = base
        self.in_features, self.out_features = lora_a.shape[1], lora_b.shape[0]
        # Kept transposed and contiguous: x @ a_t @ b_t without a strided operand per call.
        self.register_buffer("a_t", lora_a.t().contiguous(), persistent=False)  # [in, R]
        self.register_buffer("b_t", lora_b.t().contiguous(), persistent=False)  # [R, out]
        small = lora_a.device.type == "cpu" and lora_a.dtype != torch.float32
        self.a_t32 = self.a_t.float() if small else None
        self.b_t32 = self.b_t.float() if small else None
        self.layer = layer
        self.gate = gate  # shared, not a submodule
        # The base with the update merged in (merge_update), for layers where every row skips.
        # Derived from the other weights, so kept out of the module tree and its state.
        self.merged: nn.Module | None = None

    @property
    def lora_a(self) -> torch.Tensor:
        return self.a_t.t()  # [R, in]

    @property
    def lora_b(self) -> torch.Tensor:
        return self.b_t.t()  # [out, R]

    def merge_update(self) -> None:
        """Build ``merged``: the base's weight plus ``B @ A``, rounded once (to the float dtype,
        or to per-channel int8 over a quantized base; lora_merge.py), so a layer whose every row
        skips runs one matmul instead of three. It costs the base's memory a second time."""
        object.__setattr__(self, "merged", merged_linear(self.base, self.lora_a, self.lora_b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer_rows = self.gate.layer_rows
        rows = None if layer_rows is None else layer_rows[self.layer]
        if rows is None:
            return self.base(x)
        if isinstance(rows, int) and rows == 0 and self.merged is not None:
            return self.merged(x)  # every row skips: one matmul with W + BA
        out = self.base(x)  # [n, out]
        if isinstance(rows, int):
            gated = out[rows:]
            xs = x[rows:]
            if self.a_t32 is not None and gated.shape[0] <= FP32_UPDATE_ROWS:
                gated.add_(torch.mm(torch.mm(xs.float(), self.a_t32), self.b_t32))
            else:
                gated.addmm_(torch.mm(xs, self.a_t), self.b_t)
            return out
        update = torch.mm(torch.mm(x.index_select(0, rows), self.a_t), self.b_t)
        return out.index_add_(0, rows, update)


@dataclass
class GatedTarget:
    """One adapted linear, resolved on the plain model before any fusing."""

    layer: int  # decoder layer index
    parent: nn.Module  # the module that holds the linear (self_attn, mlp, an OPT layer)
    name: str  # the linear's attribute on parent (q_proj, fc1, ...)
    lora_a: torch.Tensor  # [R, in]
    lora_b: torch.Tensor  # [out, R]
    fused_name: str | None = None  # the fused linear that may replace it (cpu_packing.FUSIONS)
    parts: tuple[tuple[str, int], ...] = ()  # (name, out_features) of that fusion's parts


def find_gated_targets(model: nn.Module, adapter: Adapter) -> list[GatedTarget]:
    """Resolve the adapter's LoRA pairs (Hugging Face module names) to linears of the engine's
    decoder layers, checking shapes; any problem is a ValueError naming the adapter."""
    layer_of = {
        id(module): index
        for index, layer in enumerate(_decoder_layers(model))
        for module in layer.modules()
    }
    targets = []
    for key, (a, b) in adapter.lora.items():
        path = key.removesuffix(".weight")
        parent_path, name = path.rsplit(".", 1) if "." in path else ("", path)
        parent = _submodule(model, parent_path)
        linear = getattr(parent, name, None) if parent is not None else None
        if type(linear) is not nn.Linear or id(linear) not in layer_of:
            raise ValueError(
                f"adapter {adapter.path}: {path} is not a linear inside a decoder layer (an"
                " adapter with apply_to 'skipping' may only target those)"
            )
        if (a.shape[1], b.shape[0]) != (linear.in_features, linear.out_features):
            raise ValueError(
                f"adapter {adapter.path}: {path} is {linear.in_features} -> "
                f"{linear.out_features}, but its LoRA pair is {a.shape[1]} -> {b.shape[0]}"
            )
        target = GatedTarget(layer_of[id(linear)], parent, name, a, b)
        for fused_name, part_names in FUSIONS:
            parts = [getattr(parent, p, None) for p in part_names]
            if name in part_names and all(type(p) is nn.Linear for p in parts):
                target.fused_name = fused_name
                target.parts = tuple((p, m.out_features) for p, m in zip(part_names, parts))
        targets.append(target)
    return targets


def attach_gated_adapter(
    model: nn.Module, targets: list[GatedTarget], scale: float, merge: bool = False
) -> AdapterGate:
    """Wrap each target (after fusing/packing) in a :class:`GatedLoRALinear`; returns the gate,
    also set as ``model.adapter_gate``. A and B take the model's dtype, B the ``scale``.
    ``merge``: also build each wrapper's merged copy (:meth:`GatedLoRALinear.merge_update`)."""
    param = next(model.parameters())
    gate = AdapterGate(model.num_layers, param.device)

    def cast(t: torch.Tensor, factor: float = 1.0) -> torch.Tensor:
        # Scaled in float32, then rounded once to the model dtype.
        return (t.to(torch.float32) * factor).to(device=param.device, dtype=param.dtype)

    def wrap(base: nn.Module, a: torch.Tensor, b: torch.Tensor, layer: int) -> GatedLoRALinear:
        wrapped = GatedLoRALinear(base, cast(a), cast(b, scale), layer, gate)
        if merge:
            wrapped.merge_update()
        return wrapped

    fused: dict[tuple[int, str], list[GatedTarget]] = {}
    for t in targets:
        if t.fused_name is not None and getattr(t.parent, t.fused_name, None) is not None:
            fused.setdefault((id(t.parent), t.fused_name), []).append(t)
            continue
        setattr(t.parent, t.name, wrap(getattr(t.parent, t.name), t.lora_a, t.lora_b, t.layer))
    for group in fused.values():
        first = group[0]
        a, b = _stacked_pair(group)  # [R * k, in], [sum(out), R * k]
        base = getattr(first.parent, first.fused_name)
        setattr(first.parent, first.fused_name, wrap(base, a, b, first.layer))
    model.adapter_gate = gate
    return gate


def _stacked_pair(group: list[GatedTarget]) -> tuple[torch.Tensor, torch.Tensor]:
    """One LoRA pair for a fused linear: the parts' A stacked, B block-diagonal (zero blocks
    for the parts the adapter leaves alone)."""
    offsets, total = {}, 0
    for name, out_features in group[0].parts:
        offsets[name] = total
        total += out_features
    rank = group[0].lora_a.shape[0]
    a = torch.cat([t.lora_a.to(torch.float32) for t in group])
    b = torch.zeros(total, rank * len(group))
    for i, t in enumerate(group):
        start = offsets[t.name]
        b[start : start + t.lora_b.shape[0], i * rank : (i + 1) * rank] = t.lora_b
    return a, b


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    inner = model.model
    return inner.decoder.layers if hasattr(inner, "decoder") else inner.layers


def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    # Some OPT checkpoints (and so their adapters) omit the "model." prefix.
    for candidate in (path, f"model.{path}"):
        try:
            return model.get_submodule(candidate)
        except AttributeError:
            continue
    return None
