"""Full-depth logits of our models equal Hugging Face transformers' (fp32, tiny random configs)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import load_hf, save_tiny

from skipdecode import LLM
from skipdecode.model_runner.context import build_step_context, sort_by_start_layer


def chunked_logits(llm: LLM, token_ids: list[int], chunks: list[int]) -> torch.Tensor:
    """Logits at every position, computed chunk by chunk through the paged KV cache."""
    engine = llm.engine
    runner, kv = engine.runner, engine.kv_cache
    num_layers = engine.num_layers
    outputs, start = [], 0
    for size in chunks:
        end = start + size
        kv.allocate("probe", [end] * num_layers)
        depths = [[num_layers] * size]
        layout = sort_by_start_layer(depths, [0], num_layers)
        ctx = build_step_context(
            depths,
            [start],
            [kv.block_tables("probe")],
            num_layers,
            [0],
            layout,
            runner.key_cache,
            runner.value_cache,
            runner.block_size,
        )
        ids = torch.tensor(token_ids[start:end])[torch.from_numpy(layout.order)]
        with torch.inference_mode():
            hidden = runner.model(ids, ctx)
            logits = runner.model.compute_logits(hidden)
        outputs.append(logits[torch.from_numpy(layout.rows_of_flat)])
        start = end
    kv.free("probe")
    return torch.cat(outputs)


@pytest.fixture(scope="module", params=["llama", "qwen2", "opt"])
def model_pair(request, tmp_path_factory):
    directory = save_tiny(request.param, tmp_path_factory.mktemp(request.param))
    return load_hf(directory), LLM(str(directory), dtype="float32", num_kv_blocks=256, block_size=4)


@pytest.mark.parametrize(
    "chunks",
    [[21], [16, 1, 1, 1, 1, 1], [5, 7, 3, 1, 1, 4]],
    ids=["prefill", "prefill+decode", "chunked"],
)
def test_logits_match_transformers(model_pair, chunks):
    hf, llm = model_pair
    token_ids = torch.randint(0, hf.config.vocab_size, (sum(chunks),)).tolist()
    with torch.no_grad():
        expected = hf(torch.tensor([token_ids])).logits[0]
    ours = chunked_logits(llm, token_ids, chunks)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)


def test_greedy_generation_matches_transformers(model_pair):
    hf, llm = model_pair
    prompts = [[5, 17, 300, 9], list(range(100, 130)), [42]]
    outs = llm.generate(prompts, _greedy(12))
    for prompt, out in zip(prompts, outs):
        with torch.no_grad():
            expected = hf.generate(
                torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None
            )[0, len(prompt) :]
        assert out.token_ids == expected.tolist()


def _greedy(max_tokens: int):
    from skipdecode import SamplingParams

    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
