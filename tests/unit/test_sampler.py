"""Sampler tests: each batched result is checked against a slow per-row reference."""

from __future__ import annotations

import pytest
import torch
from sampler_checks import CPU, make_batch, random_logits, ref_allowed, ref_penalize

from skipdecode.model_runner.sampler import (
    Sampler,
    apply_penalties,
    filtered_probs,
    greedy_ids,
    is_plain_greedy,
)
from skipdecode.scheduler.sampling_params import SamplingParams

# ---- greedy and penalties ----


def test_greedy_rows_take_the_argmax() -> None:
    logits = random_logits(6, 50, seed=0)
    batch = make_batch([SamplingParams(temperature=0.0)] * 6, 50)
    out = Sampler()(logits, batch)
    assert torch.equal(out.token_ids, logits.argmax(dim=-1))
    assert out.token_ids.dtype == torch.int64
    assert out.logprobs is None and out.top_token_ids is None and out.top_logprobs is None


def test_greedy_ties_take_the_first_maximum_in_bf16() -> None:
    # bf16 logits tie often; greedy must pick the lowest tied id, as argmax does.
    logits = torch.zeros(4, 64, dtype=torch.bfloat16)
    logits[0, [3, 9]] = 1.0
    logits[1, [40, 7, 63]] = 2.5
    logits[3, [0, 63]] = -1.0  # row 2: all equal -> 0; row 3: max 0 at id 1
    batch = make_batch([SamplingParams(temperature=0.0)] * 4, 64)
    assert Sampler()(logits, batch).token_ids.tolist() == [3, 7, 0, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_ids_equal_torch_argmax_with_ties_and_plain_batches(dtype) -> None:
    # Coarse values tie often; the first maximum wins, as torch's argmax picks it.
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randint(-4, 5, (33, 1000), generator=gen) * 0.5).to(dtype)
    logits[5] = -2.0  # a row of one repeated value: id 0
    expected = logits.float().argmax(dim=-1)
    assert torch.equal(greedy_ids(logits), expected)
    assert torch.equal(greedy_ids(logits[:, 1:]), logits[:, 1:].float().argmax(dim=-1))
    # A batch of plain greedy rows needs no SamplingBatch.
    assert torch.equal(Sampler()(logits, None).token_ids, expected)


def test_plain_greedy_means_no_penalty_logprobs_or_temperature() -> None:
    assert is_plain_greedy([SamplingParams(temperature=0.0)] * 3)
    assert not is_plain_greedy([SamplingParams(temperature=0.0), SamplingParams()])
    assert not is_plain_greedy([SamplingParams(temperature=0.0, logprobs=0)])
    assert not is_plain_greedy([SamplingParams(temperature=0.0, presence_penalty=0.5)])


def test_penalties_match_per_row_reference_exactly() -> None:
    vocab_size = 40
    params = [
        SamplingParams(repetition_penalty=1.3),
        SamplingParams(repetition_penalty=0.7, frequency_penalty=0.5),
        SamplingParams(presence_penalty=1.1, frequency_penalty=-0.3),
        SamplingParams(),  # no penalties in a batch that has them
        SamplingParams(repetition_penalty=2.0, presence_penalty=-2.0, frequency_penalty=2.0),
        SamplingParams(temperature=0.0, repetition_penalty=1.5, frequency_penalty=0.2),
    ]
    prompts = [[1, 2, 3, 3], [5, 6], [], [7, 8, 9], [0, 39, 39, 4], [10] * 12]
    outputs = [[3, 4, 4], [6, 6, 6, 11], [2, 2, 20], [1], [], [10, 12, 12, 12, 13]]
    logits = random_logits(len(params), vocab_size, seed=1)
    original = logits.clone()
    batch = make_batch(params, vocab_size, prompts, outputs)
    penalized = apply_penalties(logits, batch)
    expected = torch.stack(
        [ref_penalize(logits[i], params[i], prompts[i], outputs[i]) for i in range(len(params))]
    )
    assert torch.equal(penalized, expected)
    assert not torch.equal(penalized, logits)
    assert torch.equal(logits, original)  # the caller's logits stay untouched
    # Greedy rows take the argmax of the penalized logits.
    out = Sampler()(logits, batch)
    assert out.token_ids[5] == expected[5].argmax()


def test_no_penalties_skips_the_work() -> None:
    batch = make_batch([SamplingParams()] * 2, 10, [[1, 2], [3]], [[4], [5, 5]])
    assert batch.output_counts is None and batch.is_seen is None
    logits = random_logits(2, 10, seed=2)
    assert apply_penalties(logits, batch) is logits


# ---- filtering: top-k, top-p, min-p ----

FILTER_PARAMS = [
    SamplingParams(top_k=5),
    SamplingParams(top_p=0.6),
    SamplingParams(min_p=0.1),
    SamplingParams(top_k=10, top_p=0.8),
    SamplingParams(temperature=0.5, top_p=0.9, min_p=0.05),
    SamplingParams(temperature=2.0, top_k=20, top_p=0.7, min_p=0.2),
    SamplingParams(top_p=1e-9),  # only the top token, though 1 - top_p rounds to 1 in fp32
    SamplingParams(),  # nothing filtered
    SamplingParams(temperature=0.0, top_k=3),  # greedy rows ignore filters
]


def test_filtered_probs_keep_the_reference_sets() -> None:
    vocab_size = 64
    logits = random_logits(len(FILTER_PARAMS), vocab_size, seed=3)
    probs = filtered_probs(logits, make_batch(FILTER_PARAMS, vocab_size))
    for i, params in enumerate(FILTER_PARAMS):
        if params.is_greedy:
            continue
        kept = set(torch.nonzero(probs[i]).flatten().tolist())
        assert kept == ref_allowed(logits[i], params), f"row {i}: {params}"
    assert len(set(torch.nonzero(probs[6]).flatten().tolist())) == 1
    assert torch.count_nonzero(probs[7]) == vocab_size


def test_draws_stay_inside_the_allowed_sets() -> None:
    vocab_size, num_draws = 32, 2000
    params = [p for p in FILTER_PARAMS if not p.is_greedy]
    logits = random_logits(len(params), vocab_size, seed=4)
    # Each row repeated num_draws times, so one call gives many independent draws per row.
    torch.manual_seed(0)
    batch = make_batch([p for p in params for _ in range(num_draws)], vocab_size)
    token_ids = Sampler()(logits.repeat_interleave(num_draws, dim=0), batch).token_ids
    for i, row_params in enumerate(params):
        drawn = set(token_ids[i * num_draws : (i + 1) * num_draws].tolist())
        allowed = ref_allowed(logits[i], row_params)
        assert drawn <= allowed, f"row {i}: {row_params}"
        assert len(drawn) >= min(len(allowed), 2)  # it really samples, not just argmax


# ---- temperature and distribution ----


@pytest.mark.parametrize("temperature", [1e-4, 1e-6, 1e-300])
def test_very_low_temperature_equals_argmax(temperature: float) -> None:
    # 1e-4 goes through the random path; below 1e-5 a row is greedy, since dividing logits of
    # this scale by 1e-300 would overflow them to inf and NaN.
    logits = random_logits(8, 100, seed=5, scale=30.0)
    torch.manual_seed(0)
    out = Sampler()(logits, make_batch([SamplingParams(temperature=temperature)] * 8, 100))
    assert torch.equal(out.token_ids, logits.argmax(dim=-1))


@pytest.mark.parametrize(
    "params",
    [SamplingParams(temperature=0.7), SamplingParams(temperature=1.5, top_k=6, top_p=0.9)],
)
def test_draws_follow_the_filtered_softmax(params: SamplingParams) -> None:
    vocab_size, num_draws = 8, 20000
    logits = random_logits(1, vocab_size, seed=6, scale=1.0)
    allowed = sorted(ref_allowed(logits[0], params))
    expected = torch.zeros(vocab_size, dtype=torch.float64)
    expected[allowed] = (logits[0, allowed].double() / params.temperature).softmax(dim=0)
    torch.manual_seed(1)
    batch = make_batch([params] * num_draws, vocab_size)
    token_ids = Sampler()(logits.expand(num_draws, -1), batch).token_ids
    counts = torch.bincount(token_ids, minlength=vocab_size).double()
    assert counts[expected == 0].sum() == 0
    observed, predicted = counts[allowed], expected[allowed] * num_draws
    chi_square = ((observed - predicted) ** 2 / predicted).sum().item()
    # 99.9th percentile of chi-square with 7 degrees of freedom (the most this test has).
    assert chi_square < 24.3


# ---- seeds ----


def run_steps(params: list[SamplingParams], logits: list[torch.Tensor]) -> torch.Tensor:
    """Sample several steps with generators kept across steps, as the runner does."""
    generators = [
        None if p.seed is None else torch.Generator(CPU).manual_seed(p.seed) for p in params
    ]
    sampler, vocab_size = Sampler(), logits[0].shape[-1]
    batch = make_batch(params, vocab_size, generators=generators)
    return torch.stack([sampler(step_logits, batch).token_ids for step_logits in logits], dim=1)


def test_same_seed_gives_same_tokens_in_any_batch() -> None:
    vocab_size, num_steps = 1000, 5
    seeded = SamplingParams(temperature=1.0, top_k=200, seed=1234)
    others = [
        SamplingParams(temperature=0.8),
        SamplingParams(temperature=0.0),
        SamplingParams(seed=99),
        SamplingParams(top_p=0.5),
        SamplingParams(seed=1234, temperature=0.5),
        SamplingParams(min_p=0.1),
        SamplingParams(),
    ]
    steps = [random_logits(8, vocab_size, seed=10 + s, scale=0.5) for s in range(num_steps)]
    alone = run_steps([seeded], [s[3:4] for s in steps])
    in_batch = run_steps(others[:3] + [seeded] + others[3:], steps)
    torch.manual_seed(7)  # a different global RNG state must not matter either
    in_other_batch = run_steps([seeded] + others[:2], [s[[3, 0, 1]] for s in steps])
    assert torch.equal(alone[0], in_batch[3])
    assert torch.equal(alone[0], in_other_batch[0])
    different_seed = run_steps([SamplingParams(top_k=200, seed=4321)], [s[3:4] for s in steps])
    assert not torch.equal(alone[0], different_seed[0])
