"""Structured outputs in the engine (tiny random Llama, fp32): grammar-constrained greedy decoding
equals a slow reference that masks the reference logits itself, at full depth and skipping;
sampled outputs always validate; constrained rows leave unconstrained ones unchanged."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
from reference import depths_of, reference_logits
from tiny_models import NUM_LAYERS, load_hf

from skipdecode import LLM, SamplingParams, SkipConfig
from skipdecode.scheduler import StructuredOutput

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["zip"],
        },
    },
    "required": ["name", "age"],
}
SKIPS = {"full": None, "2x": SkipConfig.for_speedup(2.0, decay_tokens=8)}


@pytest.fixture(scope="module")
def hf(tiny_llama_dir):
    return load_hf(tiny_llama_dir)


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    return LLM(str(tiny_llama_dir), dtype="float32", num_kv_blocks=1024, block_size=4)


def _allowed(matcher) -> np.ndarray:
    """Token ids the matcher allows next, from llguidance's own bitmask bytes (little-endian
    bit order within each 32-bit word, read here with numpy, not the engine's unpacking)."""
    bits = np.unpackbits(
        np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little"
    )
    return np.flatnonzero(bits)


def reference_constrained(hf, llm, prompt, constraint, skip, max_tokens) -> list[int]:
    """Greedy decoding that recomputes everything each step and masks with its own matcher."""
    schedule = (skip or SkipConfig()).resolve(NUM_LAYERS)
    matcher = llm.engine.grammars.grammar(constraint).matcher
    tokens = list(prompt)
    for _ in range(max_tokens):
        depths = depths_of(len(prompt), len(tokens), schedule)
        logits = reference_logits(hf, tokens, depths, schedule.warmup_layers)[-1]
        allowed = _allowed(matcher)
        next_id = int(allowed[logits[allowed].argmax()])
        tokens.append(next_id)
        assert matcher.consume_token(next_id)
        if matcher.is_stopped():
            break
    return tokens[len(prompt) :]


@pytest.mark.parametrize("skip_name", list(SKIPS))
@pytest.mark.parametrize(
    "constraint",
    [
        StructuredOutput.json_schema(PERSON),
        StructuredOutput.regex(r"[a-z]{2,6}@[a-z]{3}\.(com|org)"),
        StructuredOutput.choice(["red", "green", "blue"]),
    ],
    ids=["schema", "regex", "choice"],
)
def test_constrained_greedy_matches_the_masked_reference(hf, llm, constraint, skip_name):
    skip = SKIPS[skip_name]
    prompt = [11, 200, 3000, 45, 6]
    params = SamplingParams(temperature=0, max_tokens=60, structured_output=constraint)
    out = llm.generate([prompt], params, skip=skip)[0]
    assert out.token_ids == reference_constrained(hf, llm, prompt, constraint, skip, 60)
    assert out.finish_reason == "stop"


def _check(constraint: StructuredOutput, text: str) -> None:
    if constraint.kind == "json":
        jsonschema.validate(json.loads(text), json.loads(constraint.spec))
    elif constraint.kind == "choice":
        assert text in constraint.choices


@pytest.mark.parametrize("skip_name", list(SKIPS))
def test_sampled_outputs_always_validate(llm, skip_name):
    constraint = StructuredOutput.json_schema(PERSON)
    params = [
        SamplingParams(temperature=1.0, seed=s, max_tokens=200, structured_output=constraint)
        for s in range(12)
    ]
    outs = llm.generate([[5, 6, 7]] * 12, params, skip=SKIPS[skip_name])
    for out in outs:
        assert out.finish_reason == "stop", out.text
        _check(constraint, out.text)
    assert len({o.text for o in outs}) > 1  # sampling still samples inside the grammar


def test_constrained_and_free_rows_share_a_batch(llm):
    free = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    choice = StructuredOutput.choice(["alpha", "beta gamma"])
    constrained = SamplingParams(temperature=0, max_tokens=20, structured_output=choice)
    prompts = [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]
    params = [free, constrained, free, constrained]
    alone = [llm.generate([p], q)[0] for p, q in zip(prompts, params)]
    batched = llm.generate(prompts, params)
    assert [o.token_ids for o in batched] == [o.token_ids for o in alone]
    assert batched[1].text in choice.choices and batched[3].text in choice.choices


def test_a_finished_grammar_ends_the_request_even_with_ignore_eos(llm):
    choice = StructuredOutput.choice(["yes", "no"])
    params = SamplingParams(temperature=0, max_tokens=50, ignore_eos=True, structured_output=choice)
    out = llm.generate([[3, 4, 5]], params)[0]
    assert out.text in ("yes", "no") and out.finish_reason == "stop"
    assert llm.engine.kv_cache.num_free_blocks == llm.engine.kv_cache.num_blocks


def test_preemption_keeps_the_grammar_in_step(tiny_llama_dir):
    constraint = StructuredOutput.json_schema(PERSON)
    prompts = [[i, i + 1, i + 2, i + 3] * 6 for i in range(8)]
    params = SamplingParams(temperature=0, max_tokens=60, structured_output=constraint)
    roomy = LLM(str(tiny_llama_dir), dtype="float32", num_kv_blocks=2048, block_size=4)
    alone = [roomy.generate([p], params)[0].text for p in prompts]
    small = LLM(str(tiny_llama_dir), dtype="float32", num_kv_blocks=180, block_size=4)
    outs = small.generate(prompts, params)
    assert small.engine.scheduler.num_preemptions > 0
    assert [o.text for o in outs] == alone
    for out in outs:
        _check(constraint, out.text)


def test_an_unusable_constraint_is_refused_before_queueing(llm):
    params = SamplingParams(structured_output=StructuredOutput.json_schema({"type": "nope"}))
    with pytest.raises(ValueError, match="Invalid type: nope"):
        llm.engine.add_request([1, 2, 3], params)
    assert not llm.engine.has_unfinished_requests()
