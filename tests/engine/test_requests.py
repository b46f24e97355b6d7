"""Request-level behaviour through the engine: sampling, stops, logprobs and bad input."""

from __future__ import annotations

import pytest

from skipdecode import LLM, SamplingParams, SkipConfig


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    return LLM(str(tiny_llama_dir), dtype="float32", num_kv_blocks=1024, block_size=8)


def test_seeded_sampling_is_reproducible_in_any_batch(llm):
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=16, ignore_eos=True)
    alone = llm.generate("Once upon a time", params)[0].token_ids
    others = [SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)] * 5
    batch = llm.generate(
        ["a", "b c d", "Once upon a time", "e", "f g", "h"], [*others[:2], params, *others[2:]]
    )
    assert batch[2].token_ids == alone
    other_seed = SamplingParams(temperature=1.0, top_p=0.9, seed=99, max_tokens=16, ignore_eos=True)
    assert llm.generate("Once upon a time", other_seed)[0].token_ids != alone


def test_stop_string_cuts_text(llm):
    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    full = llm.generate("Hello world", greedy)[0]
    assert len(full.text) > 6
    stop = full.text[3:6]
    out = llm.generate("Hello world", SamplingParams(temperature=0, max_tokens=24, stop=[stop]))[0]
    assert out.finish_reason == "stop"
    assert out.stop_reason == stop
    assert out.text == full.text[: full.text.index(stop)]
    kept = llm.generate(
        "Hello world",
        SamplingParams(temperature=0, max_tokens=24, stop=[stop], include_stop_str_in_output=True),
    )[0]
    assert kept.text == full.text[: full.text.index(stop) + len(stop)]


def test_stop_token_ids_and_max_tokens(llm):
    greedy = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    full = llm.generate([5, 6, 7], greedy)[0]
    assert full.finish_reason == "length" and len(full.token_ids) == 10
    stop_id = full.token_ids[4]
    first = full.token_ids.index(stop_id)
    out = llm.generate(
        [5, 6, 7], SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[stop_id])
    )[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop_id
    assert out.token_ids == full.token_ids[: first + 1]


def test_logprobs_of_sampled_tokens(llm):
    out = llm.generate(
        [1, 2, 3], SamplingParams(temperature=0, max_tokens=5, logprobs=3, ignore_eos=True)
    )[0]
    assert len(out.logprobs) == 5
    for token_id, entry in zip(out.token_ids, out.logprobs):
        assert len(entry.top) == 3
        best_id, best_lp = next(iter(entry.top.items()))
        assert best_id == token_id  # greedy picks the most likely token
        assert entry.logprob == pytest.approx(best_lp)
        assert list(entry.top.values()) == sorted(entry.top.values(), reverse=True)


def test_streaming_snapshots_grow_to_final_text(llm):
    engine = llm.engine
    request_id = engine.add_request("Tell me", SamplingParams(temperature=0, max_tokens=12))
    texts = []
    while engine.has_unfinished_requests():
        for out in engine.step():
            assert out.request_id == request_id
            texts.append(out.text)
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    assert texts[-1] == llm.tokenizer.decode(out.token_ids, skip_special_tokens=True)


def test_prompt_beyond_context_is_rejected(tiny_llama_dir):
    small = LLM(str(tiny_llama_dir), dtype="float32", max_model_len=32, num_kv_blocks=64)
    with pytest.raises(ValueError, match="max_model_len=32"):
        small.generate([1] * 30, SamplingParams(max_tokens=8))
    assert not small.engine.has_unfinished_requests()


def test_max_model_len_beyond_the_models_positions_is_refused(tiny_llama_dir):
    # The tiny model has 512 positions: a longer context would fail mid-generation instead.
    with pytest.raises(ValueError, match="max_model_len=1024 .*512 positions"):
        LLM(str(tiny_llama_dir), dtype="float32", max_model_len=1024, num_kv_blocks=64)
    at_the_limit = LLM(str(tiny_llama_dir), dtype="float32", max_model_len=512, num_kv_blocks=64)
    assert at_the_limit.engine.max_model_len == 512


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: SamplingParams(max_tokens=0), "max_tokens"),
        (lambda: SamplingParams(max_tokens=-3), "max_tokens"),
        (lambda: SkipConfig(max_depth=3, min_depth=5), "min_depth"),
        (lambda: SkipConfig(warmup_layers=-1), "warmup_layers"),
        (lambda: SkipConfig(decay_tokens=0), "decay_tokens"),
    ],
)
def test_invalid_parameters_name_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_skip_beyond_the_model_is_rejected(llm):
    with pytest.raises(ValueError, match="max_depth"):
        llm.generate([1, 2], SamplingParams(max_tokens=2), skip=SkipConfig(max_depth=99))
    with pytest.raises(ValueError, match="speedup"):
        llm.generate([1, 2], SamplingParams(max_tokens=2), skip=SkipConfig.for_speedup(50))


def test_token_ids_outside_vocab_are_rejected(llm):
    with pytest.raises(ValueError, match="prompt token ids"):
        llm.generate([[1, 2, 10**9]], SamplingParams(max_tokens=2))


def test_unknown_model_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        LLM(str(tmp_path / "no-such-model"))


def test_corrupt_gguf(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    with pytest.raises(ValueError, match="broken.gguf"):
        LLM(str(bad))


def test_an_unset_step_budget_is_the_devices_default(tiny_llama_dir):
    from skipdecode import cli
    from skipdecode.cli_args import engine_config
    from skipdecode.engine import Engine

    args = cli.build_parser().parse_args(
        ["serve", "--model", str(tiny_llama_dir), "--dtype", "float32"]
    )
    config = engine_config(args)
    assert config.scheduler.max_num_batched_tokens is None  # left to the engine's device
    engine = Engine(config)
    assert engine.scheduler_config.max_num_batched_tokens == 256  # CPU
    explicit = cli.build_parser().parse_args(["serve", "--max-num-batched-tokens", "512"])
    assert engine_config(explicit).scheduler.max_num_batched_tokens == 512
