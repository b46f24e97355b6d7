"""Incremental detokenization: the text built token by token is the tokenizer's own decode."""

from __future__ import annotations

import random

import pytest

from skipdecode.detokenizer import CONTEXT_TOKENS, IncrementalDetokenizer


def reference_text(tokenizer, prompt: list[int], output: list[int], skip_special: bool) -> str:
    # What the output adds to the decoded prompt context (the spacing rule of the detokenizer).
    context = prompt[-CONTEXT_TOKENS:]
    full = tokenizer.decode(context + output, skip_special_tokens=skip_special)
    return full[len(tokenizer.decode(context, skip_special_tokens=skip_special)) :]


@pytest.mark.parametrize("skip_special", [True, False])
def test_token_by_token_text_is_the_decode_of_all_tokens(smollm_tokenizer, skip_special):
    tok = smollm_tokenizer
    rng = random.Random(0)
    text = "Héllo, wörld! 東京 🙂 def f(x): return x ** 2\n" * 3
    natural = tok.encode(text, add_special_tokens=False)
    special = sorted(tok.all_special_ids)
    for trial in range(20):
        prompt = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(1, 9))]
        if trial % 2:  # real text, some of it split mid-character by byte-level tokens
            output = natural[rng.randrange(len(natural) // 2) :][: rng.randint(5, 60)]
        else:
            output = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(5, 40))]
        output[rng.randrange(len(output))] = rng.choice(special)
        detok = IncrementalDetokenizer(tok, prompt, skip_special_tokens=skip_special)
        shown = []
        for token_id in output:
            detok.add_tokens([token_id])
            shown.append(detok.text)
        expected = reference_text(tok, prompt, output, skip_special)
        # Only an unfinished character at the end (decoded as U+FFFD) may be held back.
        assert expected.startswith(detok.text), (prompt, output)
        assert detok.text == expected or expected.endswith("\ufffd"), (prompt, output)
        assert all(b.startswith(a) for a, b in zip(shown, shown[1:]))  # text only grows


def test_a_tokenizer_that_cleans_up_spaces_goes_through_its_own_decode(smollm_tokenizer):
    calls = []

    class Wrapper:
        clean_up_tokenization_spaces = True
        backend_tokenizer = smollm_tokenizer.backend_tokenizer

        def decode(self, ids, skip_special_tokens):
            calls.append(list(ids))
            return smollm_tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    detok = IncrementalDetokenizer(Wrapper(), [1, 2, 3])
    detok.add_tokens(smollm_tokenizer.encode(" hello", add_special_tokens=False))
    assert calls and detok.text == " hello"
