"""Sampler tests on whole batches: logprobs, and mixed rows equal to single-row results."""

from __future__ import annotations

import torch
from sampler_checks import make_batch, random_logits, ref_allowed

from skipdecode.model_runner.sampler import Sampler, apply_penalties
from skipdecode.scheduler.sampling_params import SamplingParams

# ---- logprobs ----


def test_logprobs_are_raw_log_softmax() -> None:
    vocab_size = 50
    params = [
        SamplingParams(temperature=0.0, repetition_penalty=1.8, logprobs=3),
        SamplingParams(temperature=1.3, top_k=5, presence_penalty=1.0, logprobs=5, seed=0),
        SamplingParams(temperature=0.7, logprobs=0),
        SamplingParams(temperature=0.9),  # asks for none
    ]
    logits = random_logits(len(params), vocab_size, seed=7)
    batch = make_batch(params, vocab_size, [[1, 2, 3]] * 4, [[4, 5]] * 4)
    out = Sampler()(logits, batch)
    raw = logits.log_softmax(dim=-1)
    assert out.logprobs is not None and out.top_logprobs is not None
    assert out.top_token_ids is not None
    assert torch.equal(out.logprobs, raw.gather(1, out.token_ids.unsqueeze(1)).squeeze(1))
    assert out.top_logprobs.shape == out.top_token_ids.shape == (len(params), 5)
    assert torch.equal(out.top_logprobs, raw.gather(1, out.top_token_ids))
    assert torch.all(out.top_logprobs[:, :-1] >= out.top_logprobs[:, 1:])
    assert torch.equal(out.top_token_ids[:, 0], logits.argmax(dim=-1))
    assert torch.allclose(out.top_logprobs, raw.topk(5, dim=-1).values)
    assert ((out.token_ids >= 0) & (out.token_ids < vocab_size)).all()


# ---- mixed batch ----

MIXED_PARAMS = [
    SamplingParams(temperature=0.0),
    SamplingParams(temperature=0.0, repetition_penalty=1.4, logprobs=2),
    SamplingParams(temperature=0.0, frequency_penalty=0.8, presence_penalty=0.3),
    SamplingParams(temperature=0.0, top_k=3, top_p=0.5),
    SamplingParams(seed=1),
    SamplingParams(seed=2, temperature=0.6, top_k=10),
    SamplingParams(seed=3, top_p=0.8, logprobs=4),
    SamplingParams(seed=4, min_p=0.1, repetition_penalty=1.2),
    SamplingParams(seed=5, temperature=1.5, top_k=8, top_p=0.9, min_p=0.05),
    SamplingParams(seed=6, frequency_penalty=-0.5),
    SamplingParams(seed=7, temperature=1e-3),
    SamplingParams(seed=8, presence_penalty=2.0, top_k=1),
    SamplingParams(),
    SamplingParams(temperature=0.9, top_p=0.7),
    SamplingParams(min_p=0.3, logprobs=1),
    SamplingParams(top_k=4, repetition_penalty=0.8),
]


def test_mixed_batch_rows_equal_single_row_results() -> None:
    vocab_size, num_rows = 128, len(MIXED_PARAMS)
    logits = random_logits(num_rows, vocab_size, seed=8)
    prompts = [[(3 * i + j) % vocab_size for j in range(5 + i)] for i in range(num_rows)]
    outputs = [[(7 * i + j * j) % vocab_size for j in range(i % 4)] for i in range(num_rows)]
    sampler = Sampler()
    batched = sampler(logits, make_batch(MIXED_PARAMS, vocab_size, prompts, outputs))
    assert batched.top_token_ids is not None and batched.top_token_ids.shape == (num_rows, 4)
    for i, params in enumerate(MIXED_PARAMS):
        single_batch = make_batch([params], vocab_size, prompts[i : i + 1], outputs[i : i + 1])
        single = sampler(logits[i : i + 1], single_batch)
        if params.is_greedy or params.seed is not None:
            assert batched.token_ids[i] == single.token_ids[0], f"row {i}: {params}"
        if params.logprobs is not None:
            assert single.top_logprobs is not None and batched.top_logprobs is not None
            n = params.logprobs
            assert torch.equal(batched.top_logprobs[i, :n], single.top_logprobs[0, :n])
        if not params.is_greedy:
            penalized = apply_penalties(logits[i : i + 1], single_batch)[0]
            assert int(batched.token_ids[i]) in ref_allowed(penalized, params), f"row {i}"


def test_bf16_logits_sample_as_their_fp32_widening() -> None:
    # The runner hands over logits in the model's dtype; every path must equal fp32 input.
    vocab_size = 300
    logits = random_logits(len(MIXED_PARAMS), vocab_size, seed=9).to(torch.bfloat16)
    greedy = Sampler()(logits, make_batch([SamplingParams(temperature=0.0)] * 16, vocab_size))
    assert torch.equal(greedy.token_ids, logits.float().argmax(dim=-1))
    prompts = [[i, i + 1] for i in range(len(MIXED_PARAMS))]
    outputs = [[i + 2] for i in range(len(MIXED_PARAMS))]
    results = []
    for dtype_logits in (logits, logits.float()):
        torch.manual_seed(3)  # unseeded random rows draw from the global generator
        batch = make_batch(MIXED_PARAMS, vocab_size, prompts, outputs)
        results.append(Sampler()(dtype_logits, batch))
    assert torch.equal(results[0].token_ids, results[1].token_ids)
    assert results[0].top_logprobs is not None and results[1].top_logprobs is not None
    assert torch.equal(results[0].top_logprobs, results[1].top_logprobs)
