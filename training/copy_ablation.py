"""Per-layer ablation of the copy probe (``skipdecode eval copy --ablate-layers``).

The engine cannot remove a middle layer, so this runs on the Hugging Face model
(:func:`training.modeling.load_causal_lm`, fp32): at full depth, greedy, the probe accuracy with
each single decoder layer removed from ``model.model.layers`` (its residual contribution skipped:
the hidden state passes through unchanged), next to the unablated accuracy as the reference row.
The reference is compared item by item with the engine's 1x answers on the same prompts, so a
reader can tell whether the HF figures speak for the engine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from skipdecode.training.copy_probe import ProbeItem, score, span_found
from skipdecode.training.evaluate import ModelSpec


def ablate_layers(
    spec: ModelSpec,
    items: Sequence[ProbeItem],
    prompts: Sequence[list[int]],
    engine_texts: Sequence[str] | None,
    *,
    max_tokens: int,
    device: str = "auto",
    num_resamples: int = 1000,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The reference (no layer removed) and one row per removed layer, for one model.

    ``prompts`` are the items' token ids; ``engine_texts`` the engine's 1x answers to the first
    of them (None when 1x was not run).
    """
    from skipdecode.training.modeling import load_causal_lm, load_training_tokenizer, pick_device

    tokenizer = load_training_tokenizer(spec.path)
    model = load_causal_lm(spec.path, pick_device(device), spec.adapter).eval()

    def run() -> tuple[list[str], dict[str, Any]]:
        texts = greedy_texts(model, tokenizer, prompts, max_tokens)
        scores = score(items, texts, num_resamples, seed)
        del scores["is_correct"]
        return texts, scores

    texts, reference = run()
    log(f"{spec.label} HF full depth: copy accuracy {reference['accuracy']:.1f}%")
    rows = []
    for index in range(len(decoder_layers(model))):
        with without_layer(model, index):
            _, scores = run()
        drop = reference["accuracy"] - scores["accuracy"]
        rows.append({"layer": index, **scores, "drop": drop})
        log(f"{spec.label} without layer {index}: {scores['accuracy']:.1f}% (drop {drop:+.1f})")
    return {
        "label": spec.label,
        "num_items": len(items),
        "reference": {**reference, "texts": texts},
        "engine_1x": None if engine_texts is None else agreement(items, texts, engine_texts),
        "rows": rows,
    }


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder block list: ``model.model.layers`` (Llama, Qwen2) or its OPT equivalent."""
    return _layer_owner(model).layers


def _layer_owner(model: nn.Module) -> nn.Module:
    inner = model.model
    return inner if hasattr(inner, "layers") else inner.decoder


@contextlib.contextmanager
def without_layer(model: nn.Module, index: int) -> Iterator[None]:
    """Temporarily drop decoder layer ``index``; its input goes straight to the next layer.

    While it is out, the kept layers' ``layer_idx`` are renumbered 0..L-2: the KV cache holds one
    entry per configured layer and reads the sequence length from entry 0, so leaving a gap
    (at layer 0 in particular) would corrupt the decode steps' positions and masks.
    """
    owner = _layer_owner(model)
    original = owner.layers
    kept = [layer for i, layer in enumerate(original) if i != index]
    saved = []
    for new_index, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                saved.append((module, module.layer_idx))
                module.layer_idx = new_index
    owner.layers = nn.ModuleList(kept)
    try:
        yield
    finally:
        owner.layers = original
        for module, layer_idx in saved:
            module.layer_idx = layer_idx


@torch.no_grad()
def greedy_texts(
    model: nn.Module, tokenizer, prompts: Sequence[list[int]], max_tokens: int
) -> list[str]:
    """Greedy answers of an HF model to token-id prompts, in one left-padded batch. Each answer
    stops at the first of the engine's EOS ids and is decoded without special tokens."""
    from skipdecode.loading import eos_token_ids

    eos_ids = eos_token_ids(model.config, tokenizer)
    tokenizer.padding_side = "left"
    batch = tokenizer.pad({"input_ids": list(prompts)}, return_tensors="pt")
    device = next(model.parameters()).device
    out = model.generate(
        batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        do_sample=False,
        max_new_tokens=max_tokens,
        eos_token_id=sorted(eos_ids),
        pad_token_id=tokenizer.pad_token_id,
    )
    texts = []
    for row in out[:, batch["input_ids"].shape[1] :].tolist():  # [B, new tokens]
        end = next((i for i, token in enumerate(row) if token in eos_ids), len(row))
        texts.append(tokenizer.decode(row[:end], skip_special_tokens=True))
    return texts


def agreement(
    items: Sequence[ProbeItem], hf_texts: Sequence[str], engine_texts: Sequence[str]
) -> dict[str, Any]:
    """How the HF full-depth answers agree with the engine's 1x answers on their common items."""
    n = min(len(hf_texts), len(engine_texts))
    hf = [span_found(item.span, text) for item, text in zip(items[:n], hf_texts)]
    engine = [span_found(item.span, text) for item, text in zip(items[:n], engine_texts)]
    num_same_verdict = sum(a == b for a, b in zip(hf, engine))
    return {
        "num_items": n,
        "hf_accuracy": 100.0 * sum(hf) / n,
        "engine_accuracy": 100.0 * sum(engine) / n,
        "num_same_text": sum(a.strip() == b.strip() for a, b in zip(hf_texts, engine_texts[:n])),
        "num_same_verdict": num_same_verdict,
        "matches": num_same_verdict == n,  # every item right or wrong in both
    }


def ablation_markdown(ablations: Sequence[dict[str, Any]]) -> str:
    """One table per model: layer, accuracy, drop versus the unablated model."""
    lines = [
        "# Copy probe: single-layer ablation",
        "",
        "Full depth, greedy, Hugging Face model in fp32; each row removes one decoder layer.",
    ]
    for ablation in ablations:
        ref = ablation["reference"]
        lines += ["", f"## {ablation['label']} ({ablation['num_items']} items)", ""]
        lines += [_engine_sentence(ablation["engine_1x"]), ""]
        lines += ["| layer | accuracy [95% CI] | drop vs unablated |", "|---|---|---|"]
        lines.append(f"| none (reference) | {_accuracy(ref)} | 0.0 |")
        for row in ablation["rows"]:
            lines.append(f"| {row['layer']} | {_accuracy(row)} | {row['drop']:+.1f} |")
    return "\n".join(lines) + "\n"


def _accuracy(row: dict[str, Any]) -> str:
    low, high = row["accuracy_ci"]
    return f"{row['accuracy']:.1f} [{low:.1f}, {high:.1f}]"


def _engine_sentence(engine: dict[str, Any] | None) -> str:
    if engine is None:
        return "The engine did not run at 1x, so the reference is not compared with it."
    n = engine["num_items"]
    verdict = "matches" if engine["matches"] else "does not match"
    return (
        f"The unablated HF model {verdict} the engine at 1x: {engine['hf_accuracy']:.1f}% vs"
        f" {engine['engine_accuracy']:.1f}% on the same {n} items, same verdict on"
        f" {engine['num_same_verdict']}/{n}, identical text on {engine['num_same_text']}/{n}."
    )
