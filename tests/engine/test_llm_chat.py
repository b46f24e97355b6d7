"""LLM.chat: conversations through the chat template, then the same engine path as generate."""

from __future__ import annotations

import re

import pytest
from tiny_models import save_tiny

from skipdecode import LLM, SamplingParams, SkipConfig

GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
HELLO = [{"role": "user", "content": "Hello! Who are you?"}]
PARIS = [
    {"role": "system", "content": "You answer in one word."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]


@pytest.fixture(scope="module")
def llm(tiny_llama_dir) -> LLM:
    return LLM(str(tiny_llama_dir), dtype="float32", num_kv_blocks=256, block_size=4)


def _template_ids(tokenizer, messages, add_generation_prompt=True) -> list[int]:
    """What the server's chat endpoint sends the engine, spelled out with transformers alone."""
    text = tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=False
    )
    return tokenizer(text, add_special_tokens=False).input_ids


def test_the_tiny_model_has_a_chat_template(llm):
    # SmolLM2's ChatML template: the tests below are only meaningful with one.
    text = llm.tokenizer.apply_chat_template(HELLO, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>user\nHello! Who are you?<|im_end|>" in text


def test_chat_equals_generate_on_the_rendered_prompt(llm):
    out = llm.chat(HELLO, GREEDY)
    assert len(out) == 1
    ids = _template_ids(llm.tokenizer, HELLO)
    ref = llm.generate([ids], GREEDY)[0]
    assert out[0].prompt_token_ids == ids
    assert (out[0].token_ids, out[0].text) == (ref.token_ids, ref.text)


def test_a_list_of_conversations_comes_back_in_order(llm):
    params = [GREEDY, SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)]
    skip = SkipConfig(max_depth=6, min_depth=4, decay_tokens=4)
    outs = llm.chat([PARIS, HELLO], params, skip=skip)
    refs = [
        llm.generate([_template_ids(llm.tokenizer, PARIS)], GREEDY, skip=skip)[0],
        llm.generate([_template_ids(llm.tokenizer, HELLO)], params[1], skip=skip)[0],
    ]
    assert [o.prompt_token_ids for o in outs] == [r.prompt_token_ids for r in refs]
    assert [o.token_ids for o in outs] == [r.token_ids for r in refs]
    assert [len(o.token_ids) for o in outs] == [8, 3]
    assert outs[0].depths == refs[0].depths and min(outs[0].depths) == 4


def test_without_the_generation_prompt(llm):
    out = llm.chat(PARIS, GREEDY, add_generation_prompt=False)[0]
    ids = _template_ids(llm.tokenizer, PARIS, add_generation_prompt=False)
    assert out.prompt_token_ids == ids
    assert out.prompt_token_ids != _template_ids(llm.tokenizer, PARIS)


def test_an_explicit_chat_template(llm):
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    out = llm.chat(PARIS[:2], GREEDY, chat_template=template)[0]
    text = "[system] You answer in one word.\n[user] Capital of France?\n"
    assert out.prompt_token_ids == llm.tokenizer(text, add_special_tokens=False).input_ids


def test_a_template_that_rejects_the_conversation(llm):
    template = "{{ raise_exception('only users may speak') }}"
    with pytest.raises(ValueError, match="chat template error: .*only users may speak"):
        llm.chat(HELLO, chat_template=template)


def test_a_model_without_a_chat_template(llm, monkeypatch):
    monkeypatch.setattr(llm.tokenizer, "chat_template", None)
    with pytest.raises(ValueError, match="no chat template"):
        llm.chat(HELLO)


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ("Hello", "messages"),
        ([], "messages"),
        ([{"role": "user"}], "messages[0].content"),
        ([{"role": "user", "content": "hi"}, {"content": "hi"}], "messages[1].role"),
        ([{"role": "user", "content": ["hi"]}], "messages[0].content"),
        (["hi"], "messages[0]"),
        ([HELLO, [HELLO[0], {"role": "user", "content": None}]], "messages[1][1].content"),
        ([[HELLO[0], {"role": 7, "content": "x"}]], "messages[0][1].role"),
        ([[]], "messages[0]"),
        ([HELLO[0], PARIS], "messages[1]"),  # a message and a conversation mixed
    ],
)
def test_bad_messages_name_the_field(llm, messages, field):
    with pytest.raises(ValueError, match=rf"^{re.escape(field)}: "):
        llm.chat(messages)
    assert not llm.engine.has_unfinished_requests()


def test_a_model_without_a_tokenizer(tmp_path):
    directory = save_tiny("llama", tmp_path / "no-tokenizer")
    llm = LLM(str(directory), dtype="float32", num_kv_blocks=16, block_size=4)
    with pytest.raises(ValueError, match="no tokenizer"):
        llm.chat(HELLO)


def test_plain_tiny_model_reports_no_adapter_and_no_schedule(llm):
    assert llm.adapter_path is None  # "auto" merges nothing into a model given by path
    assert llm.default_skip is None


@pytest.mark.slow
def test_default_model_chat_matches_generate():
    llm = LLM(dtype="float32", num_kv_blocks=1024)
    conversation = [{"role": "user", "content": "What is 2 + 2?"}]
    out = llm.chat(conversation, GREEDY)[0]
    ref = llm.generate([_template_ids(llm.tokenizer, conversation)], GREEDY)[0]
    assert out.token_ids == ref.token_ids and out.text == ref.text
