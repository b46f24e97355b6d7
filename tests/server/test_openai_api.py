"""The API through the official ``openai`` client: completions, chat, streaming, n, seeds,
stop strings, logprobs, and the SkipDecode usage counters."""

from __future__ import annotations

import pytest
from conftest import DEFAULT_SKIP, MAX_MODEL_LEN, NUM_LAYERS

FULL_DEPTH: dict = {}  # an explicit empty `skip` runs every layer
GREEDY = {"temperature": 0.0}
MESSAGES = [{"role": "user", "content": "Tell me about the sea."}]


def depth(g: int, max_depth: int, min_depth: int, decay_tokens: int, **_) -> int:
    """DESIGN.md §2: D(g) = clamp(round(D_max - (D_max - D_min) * g / T), D_min, D_max)."""
    value = round(max_depth - (max_depth - min_depth) * g / decay_tokens)
    return min(max(value, min_depth), max_depth)


def complete(client, prompt="The ocean is", **kwargs):
    skip = kwargs.pop("skip", FULL_DEPTH)
    extra = {"skip": skip} if skip is not None else {}
    extra.update(kwargs.pop("extra_body", {}))
    for name in ("ignore_eos", "top_k", "min_p", "repetition_penalty"):  # vLLM-style extras
        if name in kwargs:
            extra[name] = kwargs.pop(name)
    kwargs.setdefault("max_tokens", 8)
    kwargs.setdefault("model", "tiny")
    return client.completions.create(prompt=prompt, extra_body=extra, **kwargs)


def stream_text(client, **kwargs) -> tuple[dict[int, str], dict[int, str]]:
    """Texts and finish reasons per choice index, from a streamed completion."""
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    for chunk in complete(client, stream=True, **kwargs):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason:
                reasons[choice.index] = choice.finish_reason
    return texts, reasons


def test_models_lists_every_served_name(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny", "tiny-alias"]
    assert models.data[0].max_model_len == MAX_MODEL_LEN


def test_version_health_and_metrics(http):
    assert http.get("/version").json()["version"]
    assert http.get("/health").json() == {"status": "ok"}
    metrics = http.get("/metrics")
    assert metrics.status_code == 200
    assert "skipdecode:" in metrics.text


def test_greedy_completion_is_reproducible_with_full_usage(client, http):
    first = complete(client, max_tokens=10, ignore_eos=True, extra_body=GREEDY)
    second = complete(client, max_tokens=10, ignore_eos=True, extra_body=GREEDY)
    assert first.choices[0].text == second.choices[0].text
    assert first.choices[0].finish_reason == "length"
    num_prompt = http.post("/tokenize", json={"prompt": "The ocean is"}).json()["count"]
    usage = first.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (num_prompt, 10)
    assert usage.total_tokens == num_prompt + 10
    # Full depth: every generated token ran every layer.
    assert (usage.layers_computed, usage.layers_skipped) == (10 * NUM_LAYERS, 0)
    assert usage.theoretical_speedup == 1.0


def test_alias_name_is_accepted(client):
    out = client.completions.create(model="tiny-alias", prompt="Hi", max_tokens=2)
    assert out.model == "tiny-alias"
    assert out.usage.completion_tokens >= 1


@pytest.mark.parametrize(
    "skip",
    [
        None,  # the server's default (DEFAULT_SKIP)
        {"warmup_layers": 1, "max_depth": 6, "min_depth": 3, "decay_tokens": 4},
        {"warmup_layers": 2, "max_depth": 8, "min_depth": 3, "decay_tokens": 10},
    ],
)
def test_skip_counters_follow_the_schedule(client, skip):
    out = complete(client, max_tokens=9, ignore_eos=True, skip=skip, extra_body=GREEDY)
    knobs = skip or DEFAULT_SKIP
    expected = sum(depth(g, **knobs) for g in range(9))
    usage = out.usage
    assert usage.completion_tokens == 9
    assert usage.layers_computed == expected
    assert usage.layers_skipped == 9 * NUM_LAYERS - expected
    assert usage.theoretical_speedup == pytest.approx(9 * NUM_LAYERS / expected)


def test_speedup_preset_skips_layers(client):
    out = complete(client, max_tokens=6, ignore_eos=True, skip={"speedup": 2.0})
    assert out.usage.layers_skipped > 0
    assert out.usage.theoretical_speedup > 1.2


def test_n_choices_use_seed_plus_index(client):
    kwargs = dict(max_tokens=6, temperature=1.0, seed=7, ignore_eos=True)
    many = complete(client, n=3, **kwargs)
    assert [c.index for c in many.choices] == [0, 1, 2]
    texts = [c.text for c in many.choices]
    assert len(set(texts)) == 3  # three seeds, three samples
    for i, text in enumerate(texts):
        alone = complete(client, **{**kwargs, "seed": 7 + i})
        assert alone.choices[0].text == text
    assert many.usage.completion_tokens == 18
    assert many.usage.prompt_tokens == alone.usage.prompt_tokens  # counted once per prompt
    assert many.usage.layers_computed == 18 * NUM_LAYERS


def test_n_choices_sum_skip_counters(client):
    skip = {"warmup_layers": 1, "max_depth": 6, "min_depth": 2, "decay_tokens": 3}
    out = complete(client, n=2, max_tokens=5, ignore_eos=True, skip=skip, seed=1)
    per_choice = sum(depth(g, **skip) for g in range(5))
    assert out.usage.layers_computed == 2 * per_choice
    assert out.usage.theoretical_speedup == pytest.approx(5 * NUM_LAYERS / per_choice)


def test_seeds_reproduce_and_differ(client):
    kwargs = dict(max_tokens=8, temperature=1.0, ignore_eos=True)
    a = complete(client, seed=11, **kwargs).choices[0].text
    b = complete(client, seed=11, **kwargs).choices[0].text
    c = complete(client, seed=12, **kwargs).choices[0].text
    assert a == b
    assert a != c


@pytest.mark.parametrize("sampling", [GREEDY, {"temperature": 0.9, "seed": 5}])
@pytest.mark.parametrize("skip", [FULL_DEPTH, None, {"speedup": 2.0}])
def test_streamed_completion_equals_non_streamed(client, sampling, skip):
    kwargs = dict(max_tokens=12, n=2, ignore_eos=True, skip=skip, extra_body=dict(sampling))
    whole = complete(client, **kwargs)
    texts, reasons = stream_text(client, **kwargs)
    assert texts == {c.index: c.text for c in whole.choices}
    assert reasons == {0: "length", 1: "length"}


def test_stop_string_cuts_text_streamed_and_not(client):
    full = complete(client, max_tokens=16, ignore_eos=True, extra_body=GREEDY).choices[0].text
    stop = full[6:9]
    assert stop.strip(), f"pick another slice of {full!r}"
    expected = full[: full.index(stop)]
    out = complete(client, max_tokens=16, stop=[stop, "never-appears"], extra_body=GREEDY)
    assert out.choices[0].text == expected
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].model_extra["stop_reason"] == stop
    texts, reasons = stream_text(client, max_tokens=16, stop=stop, extra_body=GREEDY)
    assert (texts, reasons) == ({0: expected}, {0: "stop"})


def test_completion_logprobs(client):
    out = complete(client, max_tokens=6, logprobs=3, ignore_eos=True, extra_body=GREEDY)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert 1 <= len(top) <= 3
        assert logprob <= 0
        # Greedy picks the argmax, so the sampled token leads the alternatives.
        assert logprob == pytest.approx(max(top.values()), abs=1e-4)
        assert top.get(token) == pytest.approx(logprob, abs=1e-4)
    assert lp.text_offset[0] == 0
    assert lp.text_offset == sorted(lp.text_offset)
    streamed = [
        logprob
        for chunk in complete(client, max_tokens=6, logprobs=3, stream=True, extra_body=GREEDY)
        for logprob in (chunk.choices[0].logprobs.token_logprobs if chunk.choices else [])
    ]
    assert streamed == pytest.approx(lp.token_logprobs)


def test_echo_prepends_the_prompt(client):
    out = complete(client, prompt="Once upon", max_tokens=4, echo=True, extra_body=GREEDY)
    plain = complete(client, prompt="Once upon", max_tokens=4, extra_body=GREEDY)
    assert out.choices[0].text == "Once upon" + plain.choices[0].text
    texts, _ = stream_text(client, prompt="Once upon", max_tokens=4, echo=True, extra_body=GREEDY)
    assert texts[0] == out.choices[0].text


def test_batched_prompts_and_token_ids(client, http):
    prompts = ["The ocean is", "Mountains are"]
    out = complete(client, prompt=prompts, n=2, extra_body=GREEDY)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    for p, prompt in enumerate(prompts):
        alone = complete(client, prompt=prompt, extra_body=GREEDY).choices[0].text
        assert [out.choices[2 * p + i].text for i in range(2)] == [alone, alone]
    ids = http.post("/tokenize", json={"prompt": prompts[1]}).json()["tokens"]
    by_ids = complete(client, prompt=ids, extra_body=GREEDY).choices[0].text
    assert by_ids == out.choices[2].text
    batch_ids = complete(client, prompt=[ids, ids], extra_body=GREEDY)
    assert [c.text for c in batch_ids.choices] == [by_ids, by_ids]


def test_max_tokens_defaults_to_the_rest_of_the_context(client):
    out = complete(client, max_tokens=None, ignore_eos=True, extra_body=GREEDY)
    assert out.choices[0].finish_reason == "length"
    assert out.usage.prompt_tokens + out.usage.completion_tokens == MAX_MODEL_LEN


def test_chat_completion(client, http):
    out = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_completion_tokens=5, temperature=0
    )
    choice = out.choices[0]
    assert out.object == "chat.completion"
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert out.usage.completion_tokens <= 5
    rendered = http.post("/tokenize", json={"messages": MESSAGES}).json()
    assert out.usage.prompt_tokens == rendered["count"]
    # The chat endpoint is the completion of the rendered template.
    text = http.post("/detokenize", json={"tokens": rendered["tokens"]}).json()["prompt"]
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    # (both without `skip`: the server's default schedule)
    raw = complete(client, prompt=rendered["tokens"], max_tokens=5, skip=None, extra_body=GREEDY)
    assert raw.choices[0].text == choice.message.content


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1.0, "seed": 3}])
def test_streamed_chat_equals_non_streamed(client, sampling):
    kwargs = dict(model="tiny", messages=MESSAGES, max_tokens=10, n=2, **sampling)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(
        client.chat.completions.create(
            stream=True, stream_options={"include_usage": True}, **kwargs
        )
    )
    texts: dict[int, str] = {}
    roles, reasons = set(), {}
    for chunk in chunks[:-1]:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            roles.add(c.delta.role)
            if c.finish_reason:
                reasons[c.index] = c.finish_reason
    assert texts == {c.index: c.message.content for c in whole.choices}
    assert reasons == {c.index: c.finish_reason for c in whole.choices}
    assert "assistant" in roles
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.layers_computed == whole.usage.layers_computed


def test_chat_logprobs(client):
    out = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=4, logprobs=True, top_logprobs=2
    )
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 2
        assert entry.bytes == list(entry.token.encode())
        assert entry.logprob <= 0


def test_tokenize_round_trip(http):
    tokens = http.post("/tokenize", json={"prompt": "Hello world"}).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0
    assert tokens["max_model_len"] == MAX_MODEL_LEN
    back = http.post("/detokenize", json={"tokens": tokens["tokens"]}).json()
    assert back["prompt"] == "Hello world"
