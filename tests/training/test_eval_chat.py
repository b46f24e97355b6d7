"""``skipdecode eval chat``'s measures: hand-computed cases, and the batched perplexity forward
against a one-sequence-at-a-time reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from skipdecode.scheduler import DepthSchedule, SkipConfig
from skipdecode.training import chat_metrics as m
from skipdecode.training.chat import ChatPrompt
from skipdecode.training.eval_chat import answer_nll


def test_first_difference():
    assert m.first_difference([1, 2, 3], [1, 2, 4]) == 2
    assert m.first_difference([5], [6, 7]) == 0
    assert m.first_difference([1, 2], [1, 2, 3]) == 2  # a prefix: its length
    assert m.first_difference([1, 2, 3], [1, 2, 3]) == 3


def test_repeated_ngrams():
    assert m.repeated_ngrams([1, 2, 3]) == (0, 0)  # no 4-gram at all
    assert m.repeated_ngrams([1, 2, 3, 4, 5]) == (0, 2)
    # 1 2 3 4 1 2 3 4 1: 4-grams 1234 2341 3412 4123 1234 2341 -> the last two repeat
    assert m.repeated_ngrams([1, 2, 3, 4, 1, 2, 3, 4, 1]) == (2, 6)
    assert m.repeated_ngrams([7] * 6) == (2, 3)


def test_corpus_perplexity_pools_tokens_not_conversations():
    nll = np.array([2.0, 6.0])  # conversation sums
    tokens = np.array([1, 3])
    value, (low, high) = m.perplexity(nll, tokens, resamples=200, seed=0)
    assert value == pytest.approx(math.exp(8.0 / 4))  # not the mean of exp(2) and exp(2)
    assert low <= value <= high


def test_repetition_percent_and_rouge_identity():
    value, _ = m.repetition(np.array([2.0, 0.0]), np.array([6.0, 2.0]), resamples=50, seed=0)
    assert value == pytest.approx(25.0)
    scores = m.rouge_l(["the cat sat", "a b c"], ["the cat sat", "x y z"])
    assert scores.tolist() == [100.0, 0.0]


@pytest.fixture(scope="module")
def tiny_lm():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


PROMPTS = [
    ChatPrompt("a", [1, 2, 3], [4, 5, 6, 7], ()),
    ChatPrompt("b", [9, 8, 7, 6, 5, 4], [3, 2], ()),
    ChatPrompt("c", [10], [11, 12, 13, 14, 15, 16], ()),
]


@torch.no_grad()
def reference_nll(model, prompt: ChatPrompt, schedule: DepthSchedule) -> float:
    """One sequence, no padding: each answer token's logits from the layer loop written out."""
    ids = torch.tensor([prompt.prompt_ids + prompt.reference_ids])
    n = len(prompt.prompt_ids)
    depths = [schedule.num_layers] * n + [
        schedule.depth(g) for g in range(len(prompt.reference_ids))
    ]
    hidden = model.model.embed_tokens(ids)
    positions = torch.arange(ids.shape[1])[None]
    rotary = model.model.rotary_emb(hidden, positions)
    mask = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)[None, None]
    w, L = schedule.warmup_layers, schedule.num_layers
    for index, layer in enumerate(model.model.layers):
        out = layer(hidden, attention_mask=mask, position_embeddings=rotary)
        out = out[0] if isinstance(out, tuple) else out
        runs = torch.tensor([index < w or index >= L - (d - w) for d in depths])
        hidden = torch.where(runs[None, :, None], out, hidden)
    logits = model.lm_head(model.model.norm(hidden))[0]
    logp = torch.log_softmax(logits.double(), dim=-1)
    targets = prompt.reference_ids
    return -sum(float(logp[n - 1 + i, t]) for i, t in enumerate(targets))


@pytest.mark.parametrize("speedup", [None, 2.0])
def test_batched_answer_nll_equals_the_one_sequence_reference(tiny_lm, speedup):
    num_layers = tiny_lm.config.num_hidden_layers
    schedule = (
        DepthSchedule.full(num_layers)
        if speedup is None
        else SkipConfig(max_depth=3, min_depth=2, decay_tokens=3).resolve(num_layers)
    )
    nll, counts = answer_nll(tiny_lm, PROMPTS, schedule, batch_size=2)
    assert counts == [len(p.reference_ids) for p in PROMPTS]
    for got, prompt in zip(nll, PROMPTS):
        assert got == pytest.approx(reference_nll(tiny_lm, prompt, schedule), rel=1e-4, abs=1e-4)
