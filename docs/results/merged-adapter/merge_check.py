"""Merged against unmerged gated adapter on the default model, greedy, at 2x and 3x.

    .venv/bin/python docs/results/merged-adapter/merge_check.py auto  > auto.json
    .venv/bin/python docs/results/merged-adapter/merge_check.py none  > none.json

For each weight mode (``auto``: the GGUF's Q4_1/Q8_0 blocks as stored; ``none``: float), the
shipped adapter in bf16, once with merged copies (the default in bf16 on CPU) and once with
the update added to the base's output (``merges_gated`` forced off). 16 chat prompts, 64
greedy tokens each (``ignore_eos``): how many outputs are identical, the mean position of the
first differing token, and the mean |delta logprob| of the chosen tokens before it.
"""

from __future__ import annotations

import json
import sys

import skipdecode.model_runner.loader as loader
from skipdecode import LLM, SamplingParams, SkipConfig

PROMPTS = [
    "Explain how a bicycle gear works.",
    "Write a short poem about the sea.",
    "What is the capital of France and why is it famous?",
    "Give three tips for learning Python.",
    "Summarize the plot of Romeo and Juliet.",
    "How do vaccines train the immune system?",
    "Describe a good breakfast for a runner.",
    "What causes the seasons on Earth?",
    "List the planets of the solar system in order.",
    "Why is the sky blue?",
    "Translate 'good morning, how are you' into Spanish.",
    "What is a binary search?",
    "Write a haiku about autumn leaves.",
    "Explain what inflation means for savings.",
    "How do I make a cup of green tea?",
    "What are the rules of chess for the knight?",
]
SPEEDUPS = (2.0, 3.0)


def generate(quantization: str, merge: bool) -> dict[float, list]:
    loader.merges_gated = lambda device, dtype: merge and device.type == "cpu"
    llm = LLM(quantization=quantization, dtype="bfloat16", max_num_seqs=16)
    params = SamplingParams(max_tokens=64, temperature=0.0, logprobs=0, ignore_eos=True)
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    outputs = {}
    for speedup in SPEEDUPS:
        outs = llm.chat(chats, params, skip=SkipConfig.for_speedup(speedup))
        outputs[speedup] = [(o.token_ids, [lp.logprob for lp in o.logprobs]) for o in outs]
    return outputs


def compare(plain: list, merged: list) -> dict:
    firsts, deltas = [], []
    for (tokens_a, logprobs_a), (tokens_b, logprobs_b) in zip(plain, merged):
        pairs = list(zip(tokens_a, tokens_b))
        first = next((i for i, (a, b) in enumerate(pairs) if a != b), len(tokens_a))
        firsts.append(first)
        deltas += [abs(a - b) for a, b in zip(logprobs_a[:first], logprobs_b[:first])]
    return {
        "identical": sum(f == len(t) for f, (t, _) in zip(firsts, plain)),
        "prompts": len(plain),
        "mean_first_difference": sum(firsts) / len(firsts),
        "mean_abs_delta_logprob_before_it": sum(deltas) / len(deltas),
    }


def main() -> None:
    quantization = sys.argv[1] if len(sys.argv) > 1 else "auto"
    plain, merged = generate(quantization, False), generate(quantization, True)
    report = {f"{s:g}x": compare(plain[s], merged[s]) for s in SPEEDUPS}
    print(json.dumps({"quantization": quantization, "dtype": "bfloat16", **report}, indent=2))


if __name__ == "__main__":
    main()
