"""Prompt logprobs over HTTP: ``echo`` with ``logprobs`` and vLLM's ``prompt_logprobs``, against
Hugging Face transformers' log_softmax of the prompt (tiny random Llama, fp32)."""

from __future__ import annotations

import json
from itertools import accumulate

import pytest
import torch
from tiny_models import load_hf
from transformers import AutoTokenizer

PROMPT = "The quick brown fox jumps over the lazy dog"
MESSAGES = [{"role": "user", "content": "Tell me about the sea."}]
TOLERANCE = 1e-4
# Full depth, greedy, a fixed length: the generated part is reproducible.
ECHO = {
    "model": "tiny",
    "prompt": PROMPT,
    "echo": True,
    "logprobs": 3,
    "max_tokens": 4,
    "temperature": 0,
    "ignore_eos": True,
    "skip": {},
}


@pytest.fixture(scope="module")
def hf(tiny_llama_dir):
    return load_hf(tiny_llama_dir)


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    return AutoTokenizer.from_pretrained(tiny_llama_dir)


def reference(hf, token_ids: list[int]) -> torch.Tensor:
    """[len, vocab] fp32 logprobs: row p - 1 scores token p."""
    with torch.no_grad():
        return hf(torch.tensor([token_ids])).logits[0].float().log_softmax(dim=-1)


def post(http, path: str, body: dict) -> dict:
    response = http.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def streamed(http, body: dict) -> list[dict]:
    """The chunks of a streamed response, in order."""
    chunks = []
    with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[len("data: ") :]))
    return chunks


def test_echo_logprobs_cover_the_prompt_then_the_generated_tokens(http, hf, tokenizer):
    prompt_ids = tokenizer(PROMPT).input_ids
    num_prompt = len(prompt_ids)
    choice = post(http, "/v1/completions", ECHO)["choices"][0]
    logprobs = choice["logprobs"]
    assert choice["text"].startswith(PROMPT)
    assert len(logprobs["tokens"]) == num_prompt + 4
    assert logprobs["tokens"][:num_prompt] == [tokenizer.decode([t]) for t in prompt_ids]
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    expected = reference(hf, prompt_ids)
    for position in range(1, num_prompt):
        row = expected[position - 1]
        target = row[prompt_ids[position]].item()
        assert logprobs["token_logprobs"][position] == pytest.approx(target, abs=TOLERANCE)
        top = row.topk(3)
        # Keyed by text, as OpenAI does (tokens that decode alike share a key, here as there).
        want = {tokenizer.decode([t]): v for t, v in zip(top.indices.tolist(), top.values.tolist())}
        got = logprobs["top_logprobs"][position]
        assert got.keys() == want.keys()
        assert list(got.values()) == pytest.approx(list(want.values()), abs=TOLERANCE)
    # The generated part is what the same request returns without echo.
    plain = post(http, "/v1/completions", {**ECHO, "echo": False})["choices"][0]["logprobs"]
    assert logprobs["tokens"][num_prompt:] == plain["tokens"]
    assert logprobs["token_logprobs"][num_prompt:] == pytest.approx(plain["token_logprobs"])
    # Offsets index the returned text: the prompt's tokens from 0, the generated from its end.
    lengths = [len(token) for token in logprobs["tokens"]]
    assert logprobs["text_offset"] == [0, *accumulate(lengths[:-1])]
    assert logprobs["text_offset"][num_prompt] == len(PROMPT)
    for token, offset in zip(logprobs["tokens"], logprobs["text_offset"]):
        assert choice["text"][offset : offset + len(token)] == token


def test_streamed_echo_logprobs_assemble_to_the_non_streamed_ones(http):
    whole = post(http, "/v1/completions", ECHO)["choices"][0]
    chunks = streamed(http, ECHO)
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assembled: dict[str, list] = {key: [] for key in whole["logprobs"]}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for key, values in (choice["logprobs"] or {}).items():
                assembled[key] += values
    assert text == whole["text"]
    assert assembled == whole["logprobs"]


def test_the_official_client_reads_echoed_logprobs(client, tokenizer):
    out = client.completions.create(
        model="tiny", prompt=PROMPT, echo=True, logprobs=2, max_tokens=2, temperature=0
    )
    logprobs = out.choices[0].logprobs
    num_prompt = len(tokenizer(PROMPT).input_ids)
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == num_prompt + 2
    assert logprobs.token_logprobs[0] is None
    assert all(isinstance(v, float) for v in logprobs.token_logprobs[1:])


def test_prompt_logprobs_field_per_choice(http, hf, tokenizer):
    prompts = [PROMPT, "Once upon a time"]
    body = {"model": "tiny", "prompt": prompts, "n": 2, "max_tokens": 2, "prompt_logprobs": 2}
    choices = sorted(post(http, "/v1/completions", body)["choices"], key=lambda c: c["index"])
    assert len(choices) == 4
    for choice in choices:
        prompt = prompts[choice["index"] // 2]
        assert choice["logprobs"] is None and not choice["text"].startswith(prompt)
        check_vllm_prompt_logprobs(choice["prompt_logprobs"], tokenizer(prompt).input_ids, hf, 2)
        check_decoded(choice["prompt_logprobs"], tokenizer)


def test_chat_prompt_logprobs_are_the_responses(http, hf):
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 2, "prompt_logprobs": 0}
    out = post(http, "/v1/chat/completions", body)
    rendered = post(http, "/tokenize", {"model": "tiny", "messages": MESSAGES})["tokens"]
    check_vllm_prompt_logprobs(out["prompt_logprobs"], rendered, hf, 0)


def check_vllm_prompt_logprobs(prompt_logprobs: list, prompt_ids: list[int], hf, num_top: int):
    assert len(prompt_logprobs) == len(prompt_ids)
    assert prompt_logprobs[0] is None
    expected = reference(hf, prompt_ids)
    for position in range(1, len(prompt_ids)):
        row, entries = expected[position - 1], prompt_logprobs[position]
        target_id = prompt_ids[position]
        target = row[target_id].item()
        # The prompt token is always there, with its rank in the whole vocabulary.
        entry = entries[str(target_id)]
        assert entry["logprob"] == pytest.approx(target, abs=TOLERANCE)
        assert int((row > target + TOLERANCE).sum()) + 1 <= entry["rank"]
        assert entry["rank"] <= int((row > target - TOLERANCE).sum()) + 1
        top = row.topk(num_top)
        for rank, (token_id, logprob) in enumerate(
            zip(top.indices.tolist(), top.values.tolist()), 1
        ):
            assert entries[str(token_id)]["logprob"] == pytest.approx(logprob, abs=TOLERANCE)
            if token_id != target_id:
                assert entries[str(token_id)]["rank"] == rank
        assert len(entries) == num_top + (target_id not in top.indices.tolist())


def check_decoded(prompt_logprobs: list, tokenizer) -> None:
    for entries in prompt_logprobs[1:]:
        for token_id, entry in entries.items():
            assert entry["decoded_token"] == tokenizer.decode([int(token_id)])


def test_prompt_logprobs_at_speedup_2_equal_full_depth(http):
    fast = post(http, "/v1/completions", {**ECHO, "skip": {"speedup": 2}})
    full = post(http, "/v1/completions", ECHO)
    assert fast["usage"]["layers_skipped"] > 0
    num_prompt = fast["usage"]["prompt_tokens"]
    fast_lp, full_lp = fast["choices"][0]["logprobs"], full["choices"][0]["logprobs"]
    assert fast_lp["tokens"][:num_prompt] == full_lp["tokens"][:num_prompt]
    assert fast_lp["token_logprobs"][1:num_prompt] == pytest.approx(
        full_lp["token_logprobs"][1:num_prompt], abs=1e-5
    )


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize(
    "fields",
    [
        {"prompt_logprobs": 21},
        {"prompt_logprobs": -1},
        {"prompt_logprobs": "x"},
        {"prompt_logprobs": 2.5},
        {"prompt_logprobs": True},
        {"prompt_logprobs": 1, "stream": True},  # no delta to carry them (vLLM refuses too)
    ],
)
def test_bad_prompt_logprobs_is_400_naming_the_field(http, path, fields):
    body = {"model": "tiny", "max_tokens": 1, **fields}
    body.update({"prompt": "hi"} if path == "/v1/completions" else {"messages": MESSAGES})
    response = http.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "prompt_logprobs"
    assert "prompt_logprobs" in error["message"]
