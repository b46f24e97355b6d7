"""Theoretical speedup and speedup presets (generic and per-model families), against
DESIGN.md §2 and brute-force references."""

from __future__ import annotations

import pytest
from factories import random_schedules, ref_depth

from skipdecode.scheduler import DepthSchedule, PresetFamily, SkipConfig

SCHEDULES = random_schedules(seed=0, count=60)


def ref_speedup(s: DepthSchedule, num_generated: int) -> float:
    total = sum(
        ref_depth(s.max_depth, s.min_depth, s.decay_tokens, g) for g in range(num_generated)
    )
    return s.num_layers * num_generated / total


def test_theoretical_speedup_is_layers_times_tokens_over_depth_sum():
    for s in SCHEDULES[:60]:
        for n in (1, 2, s.decay_tokens, 3 * s.decay_tokens + 1):
            assert s.theoretical_speedup(n) == pytest.approx(ref_speedup(s, n), rel=1e-12)


@pytest.mark.parametrize("num_layers", [24, 30, 32])
@pytest.mark.parametrize("target", [1, 2, 3, 4, 5])
def test_speedup_preset_lands_within_5_percent_at_decay_tokens(num_layers, target):
    s = SkipConfig.for_speedup(target).resolve(num_layers)
    assert s.num_layers == num_layers
    if not s.is_full_depth:  # the generic family: one warm-up layer, decay over 32 tokens
        assert (s.decay_tokens, s.warmup_layers) == (32, 1)
        assert s.warmup_layers + 1 <= s.min_depth <= s.max_depth <= num_layers
    assert abs(ref_speedup(s, 32) / target - 1) <= 0.05


@pytest.mark.parametrize("target", [2, 3])
def test_a_model_family_fills_only_what_the_preset_leaves_out(target):
    family = PresetFamily(warmup_layers=3, decay_tokens=24)
    s = SkipConfig.for_speedup(target).resolve(30, family)
    assert (s.warmup_layers, s.decay_tokens) == (3, 24)
    assert abs(ref_speedup(s, 24) / target - 1) <= 0.05
    # What the caller names wins over the family.
    s = SkipConfig.for_speedup(target, warmup_layers=2).resolve(30, family)
    assert (s.warmup_layers, s.decay_tokens) == (2, 24)
    s = SkipConfig.for_speedup(target, decay_tokens=40).resolve(30, family)
    assert (s.warmup_layers, s.decay_tokens) == (3, 40)
    # Explicit depths are not a preset: their warm-up and decay default to 1 and 32.
    s = SkipConfig(max_depth=18, min_depth=12).resolve(30, family)
    assert (s.warmup_layers, s.decay_tokens, s.max_depth, s.min_depth) == (1, 32, 18, 12)
    # 1x is full depth whatever the family.
    assert SkipConfig.for_speedup(1).resolve(30, family).is_full_depth


def ref_shaped_preset(num_layers, target, decay, warmup, ratio, horizon):
    """(D_max, D_min) by the documented rule, by exhaustive search: every pair within 5% of the
    target at ``horizon`` tokens, the one with D_max / D_min nearest ``ratio``, then the
    smaller error."""
    candidates = []
    for d_max in range(warmup + 1, num_layers + 1):
        for d_min in range(warmup + 1, d_max + 1):
            total = sum(ref_depth(d_max, d_min, decay, g) for g in range(horizon))
            error = abs(num_layers * horizon / total / target - 1)
            if error <= 0.05:
                candidates.append((abs(d_max / d_min - ratio), error, d_max, d_min))
    return min(candidates)[2:]


@pytest.mark.parametrize(
    ("target", "decay", "warmup", "ratio", "horizon"),
    [(2, 12, 3, 2.0, 24), (3, 12, 3, 2.5, 24), (3, 16, 1, 3.0, 40), (4, 8, 2, 1.5, None)],
)
def test_a_family_shape_picks_the_ratio_at_its_horizon(target, decay, warmup, ratio, horizon):
    family = PresetFamily(warmup, decay, depth_ratio=ratio, horizon_tokens=horizon)
    s = SkipConfig.for_speedup(target).resolve(30, family)
    n = decay if horizon is None else horizon
    assert (s.warmup_layers, s.decay_tokens) == (warmup, decay)
    assert (s.max_depth, s.min_depth) == ref_shaped_preset(30, target, decay, warmup, ratio, n)
    assert abs(ref_speedup(s, n) / target - 1) <= 0.05


def test_the_generic_shape_is_the_ratio_15_at_the_decay():
    for target in (2, 3, 4):
        s = SkipConfig.for_speedup(target, decay_tokens=24, warmup_layers=3).resolve(30)
        assert (s.max_depth, s.min_depth) == ref_shaped_preset(30, target, 24, 3, 1.5, 24)


def test_a_front_loaded_family_runs_more_layers_first_at_the_same_speedup():
    gentle = SkipConfig.for_speedup(3).resolve(30, PresetFamily(3, 24))
    front = SkipConfig.for_speedup(3).resolve(30, PresetFamily(3, 12, 2.5, 24))
    assert front.depth(0) > gentle.depth(0) and front.depth(30) < gentle.depth(30)
    assert abs(front.theoretical_speedup(24) / gentle.theoretical_speedup(24) - 1) < 0.1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"depth_ratio": 0.5}, "depth_ratio"),
        ({"depth_ratio": float("nan")}, "depth_ratio"),
        ({"depth_ratio": True}, "depth_ratio"),
        ({"horizon_tokens": 0}, "horizon_tokens"),
        ({"horizon_tokens": 2.5}, "horizon_tokens"),
        ({"decay_tokens": 0}, "decay_tokens"),
        ({"warmup_layers": -1}, "warmup_layers"),
    ],
)
def test_invalid_preset_family_raises_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"PresetFamily.{field}"):
        PresetFamily(**kwargs)


@pytest.mark.parametrize(("target", "decay", "warmup"), [(3, 256, 1), (2, 64, 2), (4, 8, 1)])
def test_speedup_preset_with_other_decay_and_warmup(target, decay, warmup):
    config = SkipConfig.for_speedup(target, decay_tokens=decay, warmup_layers=warmup)
    s = config.resolve(32)
    assert (s.decay_tokens, s.warmup_layers) == (decay, warmup)
    assert abs(ref_speedup(s, decay) / target - 1) <= 0.05


@pytest.mark.parametrize("num_layers", [4, 24, 32])
def test_speedup_one_is_full_depth(num_layers):
    s = SkipConfig.for_speedup(1).resolve(num_layers)
    assert all(s.depth(g) == num_layers for g in range(100))
    assert s.layer_num_tokens(3, 50) == [50] * num_layers
    assert SkipConfig().resolve(num_layers).layer_num_tokens(3, 50) == [50] * num_layers


def test_unreachable_speedup_raises_naming_speedup():
    with pytest.raises(ValueError, match="speedup"):
        SkipConfig.for_speedup(5).resolve(4)  # at most 4 / (w + 1) = 2x
    with pytest.raises(ValueError, match="speedup"):
        SkipConfig.for_speedup(3, warmup_layers=3).resolve(8)
    assert ref_speedup(SkipConfig.for_speedup(2).resolve(4), 32) == pytest.approx(2.0)
