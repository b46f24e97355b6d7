"""The SkipDecode depth schedule (DESIGN.md §2).

A token of depth ``D`` runs the warm-up layers ``[0, w)`` and then the top ``D - w`` layers
``[L - (D - w), L)``. Prompt tokens run every layer; the ``g``-th generated token fed back into the
model runs ``D(g) = clamp(round(D_max - (D_max - D_min) * g / T), D_min, D_max)`` layers.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache

PRESET_DECAY_TOKENS = 32  # T used by speedup presets unless the caller picks one
PRESET_DEPTH_RATIO = 1.5  # presets prefer D_max / D_min near this (a gentle linear decay)
PRESET_TOLERANCE = 0.05  # a preset's speedup at N = horizon (T) lands within 5% of the target
DEFAULT_WARMUP_LAYERS = 1  # warm-up layers unless the caller (or, for presets, the model) says


@dataclass(frozen=True)
class PresetFamily:
    """How a speedup preset picks its depths: the warm-up and decay it takes when the caller
    leaves them out, and its shape.

    A checkpoint trained with skipping records its own family (in its ``skip_schedule.json``),
    so ``{"speedup": 2}`` gets the 2x it was trained for; every other model uses the generic one.
    The shape: the preset's speedup is met at ``N = horizon_tokens`` generated tokens (None: at
    ``N = decay_tokens``), and among the depth pairs that meet it, the one whose
    ``D_max / D_min`` is nearest ``depth_ratio`` wins. A larger ratio with a short decay and a
    longer horizon is *front-loaded*: the first tokens run many layers, the rest few.
    """

    warmup_layers: int = DEFAULT_WARMUP_LAYERS
    decay_tokens: int = PRESET_DECAY_TOKENS
    depth_ratio: float = PRESET_DEPTH_RATIO
    horizon_tokens: int | None = None

    def __post_init__(self) -> None:
        owner = "PresetFamily"
        w, decay = self.warmup_layers, self.decay_tokens
        _check(_is_int(w) and w >= 0, "warmup_layers", ">= 0", owner)
        _check(_is_int(decay) and decay >= 1, "decay_tokens", ">= 1", owner)
        ratio = self.depth_ratio
        _check(
            isinstance(ratio, (int, float))
            and not isinstance(ratio, bool)
            and math.isfinite(ratio)
            and ratio >= 1.0,
            "depth_ratio",
            "a finite number >= 1",
            "PresetFamily",
        )
        horizon = self.horizon_tokens
        _check(
            horizon is None or (_is_int(horizon) and horizon >= 1),
            "horizon_tokens",
            ">= 1",
            "PresetFamily",
        )


@dataclass(frozen=True)
class SkipConfig:
    """What a user asks for: explicit knobs, or a target ``speedup`` resolved per model.

    ``max_depth=None`` means every layer; ``min_depth=None`` means ``max_depth`` (no decay).
    ``warmup_layers=None`` / ``decay_tokens=None`` mean 1 / 32, except for a ``speedup``
    preset, which takes them from the model's :class:`PresetFamily`. Values that need the
    model's layer count are checked again by :meth:`resolve`.
    """

    warmup_layers: int | None = None
    max_depth: int | None = None
    min_depth: int | None = None
    decay_tokens: int | None = None
    speedup: float | None = None

    def __post_init__(self) -> None:
        w, decay = self.warmup_layers, self.decay_tokens
        _check(w is None or (_is_int(w) and w >= 0), "warmup_layers", ">= 0")
        _check(decay is None or (_is_int(decay) and decay >= 1), "decay_tokens", ">= 1")
        lowest = (DEFAULT_WARMUP_LAYERS if w is None else w) + 1
        for name in ("max_depth", "min_depth"):
            value = getattr(self, name)
            _check(value is None or (_is_int(value) and value >= lowest), name, f">= {lowest}")
        if self.max_depth is not None and self.min_depth is not None:
            _check(self.min_depth <= self.max_depth, "min_depth", "<= max_depth")
        if self.speedup is not None:
            _check(
                isinstance(self.speedup, (int, float)) and math.isfinite(self.speedup),
                "speedup",
                "a finite number",
            )
            _check(self.speedup >= 1.0, "speedup", ">= 1")
            _check(
                self.max_depth is None and self.min_depth is None,
                "speedup",
                "given alone (not together with max_depth/min_depth)",
            )

    @classmethod
    def for_speedup(
        cls, speedup: float, decay_tokens: int | None = None, warmup_layers: int | None = None
    ) -> SkipConfig:
        """A preset for a target theoretical speedup (1x..5x); depths are chosen per model, and
        a warm-up or decay left out comes from the model's preset family."""
        return cls(warmup_layers=warmup_layers, decay_tokens=decay_tokens, speedup=speedup)

    def resolve(self, num_layers: int, family: PresetFamily | None = None) -> DepthSchedule:
        """The concrete schedule for a model with ``num_layers`` decoder layers (``family``:
        the model's preset warm-up and decay; None: the generic 1 and 32)."""
        if self.speedup is not None:
            family = family or PresetFamily()
            return preset_schedule(
                num_layers,
                self.speedup,
                family.decay_tokens if self.decay_tokens is None else self.decay_tokens,
                family.warmup_layers if self.warmup_layers is None else self.warmup_layers,
                family.depth_ratio,
                family.horizon_tokens,
            )
        max_depth = num_layers if self.max_depth is None else self.max_depth
        min_depth = max_depth if self.min_depth is None else self.min_depth
        return DepthSchedule(
            num_layers,
            DEFAULT_WARMUP_LAYERS if self.warmup_layers is None else self.warmup_layers,
            max_depth,
            min_depth,
            PRESET_DECAY_TOKENS if self.decay_tokens is None else self.decay_tokens,
        )


@dataclass(frozen=True)
class DepthSchedule:
    """A resolved schedule for one model: ``D(g)`` and the layers each depth runs."""

    num_layers: int
    warmup_layers: int
    max_depth: int
    min_depth: int
    decay_tokens: int

    def __post_init__(self) -> None:
        L, w = self.num_layers, self.warmup_layers
        _check(_is_int(L) and L >= 1, "num_layers", ">= 1")
        if self.is_full_depth:
            return
        _check(_is_int(w) and 0 <= w < L, "warmup_layers", f"in [0, {L - 1}] for {L} layers")
        _check(
            w + 1 <= self.min_depth <= self.max_depth <= L,
            "max_depth/min_depth",
            f"within warmup_layers + 1 <= min_depth <= max_depth <= {L}"
            f" (got min_depth={self.min_depth}, max_depth={self.max_depth})",
        )
        _check(_is_int(self.decay_tokens) and self.decay_tokens >= 1, "decay_tokens", ">= 1")

    @classmethod
    def full(cls, num_layers: int) -> DepthSchedule:
        return cls(num_layers, 0, num_layers, num_layers, 1)

    @property
    def is_full_depth(self) -> bool:
        return self.min_depth == self.num_layers and self.max_depth == self.num_layers

    def depth(self, g: int) -> int:
        """Depth of the ``g``-th generated token fed back into the model."""
        table = self._depth_table
        return table[g] if g < len(table) else self.min_depth

    def depths(self, num_generated: int) -> list[int]:
        """``[D(0), ..., D(num_generated - 1)]``."""
        table = self._depth_table
        head = list(table[:num_generated])
        return head + [self.min_depth] * (num_generated - len(head))

    @cached_property
    def _depth_table(self) -> tuple[int, ...]:
        # D(g) for g <= T; from T on, the depth stays at min_depth.
        span = self.max_depth - self.min_depth
        return tuple(
            min(
                max(round(self.max_depth - span * g / self.decay_tokens), self.min_depth),
                self.max_depth,
            )
            for g in range(self.decay_tokens + 1)
        )

    def start_layer(self, depth: int) -> int:
        """First layer a token of ``depth`` runs after the warm-up layers."""
        return self.num_layers - (depth - self.warmup_layers)

    def runs_layer(self, depth: int, layer: int) -> bool:
        return layer < self.warmup_layers or layer >= self.start_layer(depth)

    @cached_property
    def _num_generated_running(self) -> tuple[int, ...]:
        # For each layer, how many generated tokens run it. D(g) never increases, so they are
        # a prefix g < limit; sys.maxsize where every generated token runs the layer.
        limits: list[int] = []
        for layer in range(self.num_layers):
            needed = (
                0 if layer < self.warmup_layers else self.num_layers - layer + self.warmup_layers
            )
            if needed <= self.min_depth:
                limits.append(sys.maxsize)
                continue
            g = 0
            while self.depth(g) >= needed:
                g += 1
            limits.append(g)
        return tuple(limits)

    def layer_num_tokens(self, prompt_len: int, num_tokens: int) -> list[int]:
        """Per layer, how many of a sequence's first ``num_tokens`` positions ran that layer.

        These positions are always a prefix of the sequence (DESIGN.md §2).
        """
        if self.is_full_depth:
            return [num_tokens] * self.num_layers
        num_generated = max(num_tokens - prompt_len, 0)
        base = min(num_tokens, prompt_len)
        return [base + min(num_generated, lim) for lim in self._num_generated_running]

    def num_tokens_within(self, prompt_len: int, layer_capacity: Sequence[int]) -> int:
        """The largest ``num_tokens`` whose ``layer_num_tokens(prompt_len, num_tokens)`` stays
        within ``layer_capacity[l]`` on every layer (sys.maxsize: no limit).

        A layer's count is ``min(n, P) + min(max(n - P, 0), limit)``: it never exceeds its
        capacity when ``P + limit`` fits, and otherwise grows with ``n`` up to it, so it fits
        exactly while ``n <= capacity``.
        """
        within = sys.maxsize
        for capacity, limit in zip(layer_capacity, self._num_generated_running, strict=True):
            if prompt_len + limit > capacity:
                within = min(within, capacity)
        return within

    def theoretical_speedup(self, num_generated: int) -> float:
        """``L * N / sum(D(g) for g < N)``, the paper's speedup figure."""
        if num_generated <= 0:
            return 1.0
        total = sum(self.depths(num_generated))
        return self.num_layers * num_generated / total


@lru_cache(maxsize=256)  # a search over every depth pair: ~24 ms at L = 30, T = 32
def preset_schedule(
    num_layers: int,
    speedup: float,
    decay_tokens: int = PRESET_DECAY_TOKENS,
    warmup_layers: int = 1,
    depth_ratio: float = PRESET_DEPTH_RATIO,
    horizon_tokens: int | None = None,
) -> DepthSchedule:
    """The schedule whose theoretical speedup at ``N = horizon_tokens`` (None: ``decay_tokens``)
    is nearest ``speedup``, in the shape ``depth_ratio`` asks for.

    Rule: among all integer pairs ``warmup + 1 <= D_min <= D_max <= L``, keep those within 5% of
    the target at ``N``, and pick the one whose ``D_max / D_min`` is closest to ``depth_ratio``
    (1.5 unless the model's preset family says otherwise; ties: smaller error). 1x is full
    depth. A target no pair reaches within 5% is an error.
    """
    if speedup <= 1.0:
        return DepthSchedule.full(num_layers)
    horizon = decay_tokens if horizon_tokens is None else horizon_tokens
    best: tuple[float, float, DepthSchedule] | None = None
    closest = math.inf
    for max_depth in range(warmup_layers + 1, num_layers + 1):
        for min_depth in range(warmup_layers + 1, max_depth + 1):
            sched = DepthSchedule(num_layers, warmup_layers, max_depth, min_depth, decay_tokens)
            error = abs(sched.theoretical_speedup(horizon) / speedup - 1)
            closest = min(closest, error)
            if error > PRESET_TOLERANCE:
                continue
            key = (abs(max_depth / min_depth - depth_ratio), error, sched)
            if best is None or key[:2] < best[:2]:
                best = key
    if best is None:
        reachable = num_layers / (warmup_layers + 1)
        raise ValueError(
            f"SkipConfig.speedup={speedup:g} is not reachable for a model with {num_layers} layers"
            f" and warmup_layers={warmup_layers} (at most {reachable:.2f}x)"
        )
    return best[2]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(ok: bool, name: str, requirement: str, owner: str = "SkipConfig") -> None:
    if not ok:
        raise ValueError(f"{owner}.{name} must be {requirement}")
