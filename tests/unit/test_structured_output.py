"""Structured-output pieces without a model: constraint specs, schema closing, bitmask layout,
and what the compiled grammars accept (SmolLM2's tokenizer)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from skipdecode.model_runner.grammar_mask import bitmask_width, unpack_bitmask
from skipdecode.scheduler import SamplingParams, StructuredOutput
from skipdecode.structured_output import GrammarCompiler, closed_objects


@pytest.fixture(scope="module")
def compiler(smollm_tokenizer):
    return GrammarCompiler(smollm_tokenizer, 49152)


def _accepts(compiler, constraint, text: str) -> bool:
    """Whether the grammar takes ``text`` (as the tokenizer splits it) and is then complete."""
    grammar = compiler.grammar(constraint)
    ids = compiler._hf_tokenizer(text, add_special_tokens=False).input_ids
    return all(grammar.accept(t) for t in ids) and grammar.matcher.is_accepting()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": "yaml", "spec": "x"}, "kind"),
        ({"kind": "json", "spec": ""}, "spec"),
        ({"kind": "choice", "choices": []}, "choices"),
        ({"kind": "choice", "choices": ["a", ""]}, "choices"),
        ({"kind": "regex", "spec": 5}, "spec"),
    ],
)
def test_bad_constraints_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"StructuredOutput\.{field}"):
        StructuredOutput(**kwargs)


def test_sampling_params_take_only_a_structured_output():
    with pytest.raises(ValueError, match="SamplingParams.structured_output"):
        SamplingParams(structured_output={"type": "json_object"})
    params = SamplingParams(structured_output=StructuredOutput.json_schema({"type": "object"}))
    assert json.loads(params.structured_output.spec) == {"type": "object"}
    hash(params)  # still hashable


def test_closed_objects_close_only_objects_that_say_nothing():
    schema = {
        "type": "object",
        "properties": {
            "properties": {"type": "object", "properties": {"x": {"type": "integer"}}},
            "open": {"type": "object", "properties": {}, "additionalProperties": True},
            "typed": {"type": "object", "additionalProperties": {"properties": {"y": {}}}},
            "list": {"type": "array", "items": {"properties": {"z": {}}}},
        },
        "$defs": {"d": {"anyOf": [{"properties": {"w": {}}}, {"type": "string"}]}},
    }
    out = closed_objects(schema)
    assert out["additionalProperties"] is False
    props = out["properties"]
    assert set(props) == {"properties", "open", "typed", "list"}  # the map itself is untouched
    assert props["properties"]["additionalProperties"] is False
    assert props["open"]["additionalProperties"] is True
    assert "additionalProperties" not in props["typed"]["additionalProperties"]["properties"]
    assert props["typed"]["additionalProperties"]["additionalProperties"] is False
    assert props["list"]["items"]["additionalProperties"] is False
    assert out["$defs"]["d"]["anyOf"][0]["additionalProperties"] is False
    assert "additionalProperties" not in schema  # the caller's schema is not modified


def test_unpack_bitmask_matches_bit_by_bit():
    gen = torch.Generator().manual_seed(0)
    for vocab in (1, 31, 32, 33, 100, 49152):
        words = bitmask_width(vocab)
        bitmask = torch.randint(-(2**31), 2**31 - 1, (3, words), generator=gen, dtype=torch.int32)
        expected = torch.tensor(
            [
                [(int(bitmask[r, t // 32]) >> (t % 32)) & 1 == 1 for t in range(vocab)]
                for r in range(3)
            ]
        )
        assert torch.equal(unpack_bitmask(bitmask, vocab), expected)
    # A vocabulary wider than the bitmask: the extra tokens are forbidden.
    wide = unpack_bitmask(torch.full((1, 1), -1, dtype=torch.int32), 40)
    assert wide[0, :32].all() and not wide[0, 32:].any()


@pytest.mark.parametrize(
    "choices", [["yes", "no"], ["a b", "x.y?", "(1|2)", "#1 & ~", "naïve", 'say "hi"\n', "\\d"]]
)
def test_choice_accepts_exactly_its_choices(compiler, choices):
    constraint = StructuredOutput.choice(choices)
    for choice in choices:
        assert _accepts(compiler, constraint, choice), choice
    assert not _accepts(compiler, constraint, choices[0] + "x")
    assert not _accepts(compiler, constraint, "maybe")


def test_json_schema_grammar_accepts_valid_compact_json_only(compiler):
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}, "s": {"enum": ["a"]}},
        "required": ["n"],
    }
    constraint = StructuredOutput.json_schema(schema)
    assert _accepts(compiler, constraint, '{"n":3,"s":"a"}')
    assert _accepts(compiler, constraint, '{"n":3}')
    assert not _accepts(compiler, constraint, '{"n":10}')  # out of bounds
    assert not _accepts(compiler, constraint, '{"n":3,"t":1}')  # closed object
    assert not _accepts(compiler, constraint, '{"s":"a"}')  # n is required


def test_regex_is_matched_whole(compiler):
    constraint = StructuredOutput.regex(r"\d{3}-\d{4}")
    assert _accepts(compiler, constraint, "555-1234")
    assert not _accepts(compiler, constraint, "555-12345")


@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        (StructuredOutput.json_schema({"type": "foo"}), "Invalid type: foo"),
        (StructuredOutput.json_schema({"not": {"type": "string"}}), "Unimplemented keys"),
        (StructuredOutput("json", "[1, 2]"), "must be an object"),
        (StructuredOutput("json", "{nope"), "not valid JSON"),
        (StructuredOutput.json_schema({"$ref": "http://example.com/s.json"}), "not present"),
        (StructuredOutput.regex("(("), "unclosed group"),
        (StructuredOutput.lark("start: missing_rule"), "missing_rule"),
    ],
)
def test_unusable_constraints_raise_with_the_reason(compiler, constraint, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        compiler.compile(constraint)


def test_compiled_grammars_are_cached(compiler):
    constraint = StructuredOutput.json_schema({"type": "array", "items": {"type": "integer"}})
    first = compiler.compile(constraint)
    assert compiler.compile(StructuredOutput.json_schema(constraint.spec)) is first
