"""The depth schedule, per-layer position counts and parameter validation, against DESIGN.md §2."""

from __future__ import annotations

import math
import random
import subprocess
import sys

import pytest
from factories import (
    random_schedules,
    ref_depth,
    ref_depths,
    ref_layer_num_tokens,
    ref_positions_running,
    ref_runs_layer,
)

from skipdecode.scheduler import DepthSchedule, SamplingParams, SkipConfig

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
