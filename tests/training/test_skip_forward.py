"""The skip-aware training forward against the slow reference and the engine."""

from __future__ import annotations

import pytest
import torch
from reference import depths_of, reference_logits
from tiny_models import NUM_LAYERS, load_hf

from skipdecode import LLM, SamplingParams, SkipConfig
from skipdecode.training.batch import Example, collate
from skipdecode.training.skip_forward import layer_runs, position_depths, skip_forward

SCHEDULES = {
    "decay": SkipConfig(max_depth=7, min_depth=3, decay_tokens=6),
    "warmup-2": SkipConfig(warmup_layers=2, max_depth=6, min_depth=4, decay_tokens=10),
    "preset-3x": SkipConfig.for_speedup(3.0, decay_tokens=5),
    "full": SkipConfig(),
}
# Different prompt and target lengths, so right padding and per-row depths both matter.
EXAMPLES = [
    Example([11, 200, 3000, 45, 6], [17, 99, 400, 5, 8, 23, 71, 9, 2]),
    Example([7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 99], [5, 6, 2]),
    Example([1, 2], [300, 301, 302, 303, 304, 305, 306, 307, 308, 309, 310, 311, 312]),
]


@pytest.fixture(scope="module", params=["llama", "opt"])
def model_and_dir(request, tiny_llama_dir, tiny_opt_dir):
    directory = tiny_llama_dir if request.param == "llama" else tiny_opt_dir
    return load_hf(directory), directory


def test_depths_and_runs_follow_the_schedule():
    schedule = SCHEDULES["warmup-2"].resolve(NUM_LAYERS)
    depths = position_depths(torch.tensor([3]), 20, schedule)[0].tolist()
    assert depths == depths_of(3, 20, schedule)
    runs = layer_runs(torch.tensor([[NUM_LAYERS, 4]]), schedule)[:, 0]  # [L, 2]
    assert runs[:, 0].all()  # a prompt position runs everything
    assert runs[:, 1].tolist() == [True, True] + [False] * 4 + [True, True]  # warm-up + top 2


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_forward_matches_reference_logits(model_and_dir, name):
    model, _ = model_and_dir
    schedule = SCHEDULES[name].resolve(NUM_LAYERS)
    batch = collate(EXAMPLES, pad_id=0)
    with torch.no_grad():
        logits = skip_forward(model, batch, schedule)
    for row, ex in enumerate(EXAMPLES):
        tokens = ex.prompt_ids + ex.target_ids
        depths = depths_of(len(ex.prompt_ids), len(tokens), schedule)
        expected = reference_logits(model, tokens, depths, schedule.warmup_layers)
        torch.testing.assert_close(logits[row, : len(tokens)], expected, atol=1e-4, rtol=0)
    if name != "full":  # the schedule really changes the result
        with torch.no_grad():
            full = skip_forward(model, batch, SCHEDULES["full"].resolve(NUM_LAYERS))
        assert (full - logits).abs().max() > 1e-2


def test_forward_rows_from_skips_the_head_only(model_and_dir):
    model, _ = model_and_dir
    schedule = SCHEDULES["decay"].resolve(NUM_LAYERS)
    batch = collate(EXAMPLES, pad_id=0)
    with torch.no_grad():
        whole = skip_forward(model, batch, schedule)
        tail = skip_forward(model, batch, schedule, from_row=1)
    torch.testing.assert_close(tail, whole[:, 1:])


def _greedy_with_forward(model, prompt: list[int], schedule, num_tokens: int) -> list[int]:
    tokens: list[int] = []
    for _ in range(num_tokens):
        # The last target token is a placeholder: only the row before it is read.
        batch = collate([Example(prompt, [*tokens, 0])], pad_id=0)
        with torch.no_grad():
            logits = skip_forward(model, batch, schedule)
        tokens.append(int(logits[0, len(prompt) + len(tokens) - 1].argmax()))
    return tokens


@pytest.mark.parametrize("name", ["decay", "warmup-2"])
def test_engine_greedy_equals_forward_greedy(model_and_dir, name):
    model, directory = model_and_dir
    skip = SCHEDULES[name]
    schedule = skip.resolve(NUM_LAYERS)
    llm = LLM(str(directory), dtype="float32", num_kv_blocks=256, block_size=4)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    prompt = EXAMPLES[0].prompt_ids
    out = llm.generate([prompt], params, skip=skip)[0]
    assert out.depths == [schedule.depth(g) for g in range(12)]
    assert out.token_ids == _greedy_with_forward(model, prompt, schedule, 12)
