"""The depth schedule, presets and parameter validation, checked against DESIGN.md §2."""

from __future__ import annotations

import math
import random
import subprocess
import sys

import pytest
from factories import (
    ref_depth,
    ref_depths,
    ref_layer_num_tokens,
    ref_positions_running,
    ref_runs_layer,
)

from skipdecode.scheduler import DepthSchedule, PresetFamily, SamplingParams, SkipConfig


def random_schedules(seed: int, count: int) -> list[DepthSchedule]:
    """Valid schedules over a wide range of (L, w, D_max, D_min, T)."""
    rng = random.Random(seed)
    schedules = []
    for _ in range(count):
        num_layers = rng.randint(2, 40)
        warmup = rng.randint(0, min(3, num_layers - 1))
        min_depth = rng.randint(warmup + 1, num_layers)
        max_depth = rng.randint(min_depth, num_layers)
        decay = rng.choice([1, 2, 3, 7, rng.randint(1, 100)])
        schedules.append(DepthSchedule(num_layers, warmup, max_depth, min_depth, decay))
    return schedules


SCHEDULES = random_schedules(seed=0, count=150)


# ---- D(g) ---------------------------------------------------------------------------------------


def test_depth_matches_design_formula():
    for s in SCHEDULES:
        for g in range(3 * s.decay_tokens + 3):
            expected = ref_depth(s.max_depth, s.min_depth, s.decay_tokens, g)
            assert s.depth(g) == expected, (s, g)


def test_depth_starts_at_max_never_increases_and_ends_at_min():
    for s in SCHEDULES:
        depths = [s.depth(g) for g in range(2 * s.decay_tokens + 5)]
        assert depths[0] == s.max_depth
        assert all(a >= b for a, b in zip(depths, depths[1:])), s
        assert all(d == s.min_depth for d in depths[s.decay_tokens :]), s


def test_runs_layer_and_start_layer_follow_design_rule():
    for s in SCHEDULES[:40]:
        L, w = s.num_layers, s.warmup_layers
        for depth in range(s.min_depth, s.max_depth + 1):
            assert s.start_layer(depth) == L - (depth - w)
            run = [layer for layer in range(L) if s.runs_layer(depth, layer)]
            assert run == [layer for layer in range(L) if ref_runs_layer(L, w, depth, layer)]
            assert len(run) == depth  # depth counts the layers a token runs, warm-up included
            assert run[-1] == L - 1  # every token ends at the last layer


# ---- per-layer position counts ------------------------------------------------------------------


def test_layer_num_tokens_equals_brute_force_count_and_positions_are_a_prefix():
    rng = random.Random(1)
    for s in SCHEDULES:
        prompt_len = rng.randint(1, 12)
        longest = prompt_len + 2 * s.decay_tokens + 4
        depths = ref_depths(s, prompt_len, longest)
        for num_tokens in sorted({0, 1, prompt_len, rng.randint(0, longest), longest}):
            counts = s.layer_num_tokens(prompt_len, num_tokens)
            assert len(counts) == s.num_layers
            for layer in range(s.num_layers):
                running = ref_positions_running(s, depths[:num_tokens], layer)
                assert running == list(range(len(running))), (s, layer)  # a prefix
                assert counts[layer] == len(running), (s, prompt_len, num_tokens, layer)


def test_num_tokens_within_is_the_longest_prefix_that_fits_the_capacities():
    # Brute force: walk n up while the reference counts fit every layer's capacity.
    rng = random.Random(2)
    for s in SCHEDULES[:80]:
        prompt_len = rng.randint(1, 12)
        longest = prompt_len + 2 * s.decay_tokens + 40
        for _ in range(4):
            block = rng.choice([1, 2, 4, 16])
            grown_to = rng.randint(0, longest)
            capacity = [
                -(-n // block) * block + block * rng.randint(0, 1)
                for n in ref_layer_num_tokens(s, prompt_len, grown_to)
            ]
            n = 0
            while n < longest and all(
                c <= cap for c, cap in zip(ref_layer_num_tokens(s, prompt_len, n + 1), capacity)
            ):
                n += 1
            within = s.num_tokens_within(prompt_len, capacity)
            if n == longest:  # fits as far as we looked: unbounded or beyond
                assert within >= longest, (s, prompt_len, capacity)
            else:
                assert within == n, (s, prompt_len, capacity)


def test_layer_counts_worked_example():
    # L=8, w=1, D_max=8, D_min=3, T=4: D(g) = round(8 - 5g/4) = 8, 7, 6, 4, 3, 3, ...
    # Layer l >= 1 runs for depth >= 8 - l + 1, so layers 1..5 take the prompt (5) plus
    # 1, 2, 3, 3, 4 generated tokens; layers 0, 6, 7 take every position.
    s = DepthSchedule(8, 1, 8, 3, 4)
    assert s.layer_num_tokens(prompt_len=5, num_tokens=105) == [105, 6, 7, 8, 8, 9, 105, 105]
    assert s.layer_num_tokens(prompt_len=5, num_tokens=3) == [3] * 8


# ---- theoretical speedup and presets -------------------------------------------------------------


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


# ---- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"warmup_layers": -1}, "warmup_layers"),
        ({"decay_tokens": 0}, "decay_tokens"),
        ({"decay_tokens": -3}, "decay_tokens"),
        ({"max_depth": 4, "min_depth": 5}, "min_depth"),
        ({"warmup_layers": 2, "min_depth": 2}, "min_depth"),
        ({"warmup_layers": 1, "min_depth": 1}, "min_depth"),
        ({"warmup_layers": 2, "max_depth": 2}, "max_depth"),
        ({"speedup": 0.5}, "speedup"),
        ({"speedup": float("nan")}, "speedup"),
        ({"speedup": float("inf")}, "speedup"),
        ({"speedup": 2.0, "max_depth": 8}, "speedup"),
        ({"speedup": 2.0, "min_depth": 4}, "speedup"),
    ],
)
def test_invalid_skip_config_raises_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SkipConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"max_depth": 33}, "max_depth"), ({"min_depth": 33}, "min_depth")],
)
def test_depths_beyond_the_model_raise_at_resolve(kwargs, field):
    config = SkipConfig(**kwargs)  # fine until the layer count is known
    with pytest.raises(ValueError, match=field):
        config.resolve(32)
    config.resolve(40)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"top_p": math.nan}, "top_p"),
        ({"top_k": 1.5}, "top_k"),
        ({"min_p": -0.1}, "min_p"),
        ({"min_p": 1.5}, "min_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"seed": 1.5}, "seed"),
        ({"stop": [""]}, "stop"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"logprobs": 21}, "logprobs"),
        ({"logprobs": -1}, "logprobs"),
        ({"prompt_logprobs": 21}, "prompt_logprobs"),
    ],
)
def test_invalid_sampling_params_raise_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        SamplingParams(**kwargs)


def test_valid_sampling_params_edges_are_accepted():
    params = SamplingParams(
        max_tokens=1, temperature=0, top_p=1.0, logprobs=20, prompt_logprobs=0, stop=["x"]
    )
    assert params.is_greedy
    assert params.stop == ("x",)
    assert SamplingParams(stop="abc").stop == ("abc",)  # one string, not its characters


def test_scheduler_and_kv_cache_import_without_torch():
    code = (
        "import sys, skipdecode.scheduler, skipdecode.kv_cache; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
