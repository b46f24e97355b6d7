"""``skipdecode eval copy`` end to end on the tiny model, and the layer removal it ablates with."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch
from tiny_models import NUM_LAYERS, tiny_hf_model

from skipdecode.cli import build_parser
from skipdecode.training.copy_ablation import decoder_layers, without_layer
from skipdecode.training.copy_probe import span_found
from skipdecode.training.eval_copy import CopyEvalConfig, evaluate_copy, probe_prompt_ids
from skipdecode.training.evaluate import ModelSpec


def config(tiny_llama_dir, out_dir, **overrides) -> CopyEvalConfig:
    fields = dict(
        models=(ModelSpec("tiny", str(tiny_llama_dir)),),
        out_dir=str(out_dir),
        num_items=5,
        speedups=(1.0, 2.0),
        max_tokens=6,
        decay_tokens=4,
        dtype="float32",
        num_resamples=20,
    )
    return CopyEvalConfig(**{**fields, **overrides})


def test_evaluate_copy_writes_results_table_and_generations(tiny_llama_dir, tmp_path):
    results = evaluate_copy(config(tiny_llama_dir, tmp_path), log=lambda _: None)
    model = results["models"][0]
    assert model["prompt_format"] == "chat template"
    assert model["presets_from"] == "config" and model["decay_tokens"] == 4
    rows = model["rows"]
    assert [r["target_speedup"] for r in rows] == [1.0, 2.0]
    assert rows[0]["mean_theoretical_speedup"] == 1.0
    assert rows[1]["mean_theoretical_speedup"] > 1.0
    assert all(len(r["per_kind"]) == 5 for r in rows)  # five items: one of each kind
    records = [json.loads(line) for line in (tmp_path / "generations.jsonl").open()]
    assert len(records) == 2 * 5
    for record in records:
        assert record["is_correct"] == span_found(record["span"], record["text"])
    for row in rows:
        verdicts = [
            r["is_correct"] for r in records if r["target_speedup"] == row["target_speedup"]
        ]
        assert row["accuracy"] == 100.0 * sum(verdicts) / len(verdicts)
    table = (tmp_path / "results.md").read_text()
    assert table.count("| tiny |") == 2
    assert "| model | target | accuracy [95% CI] | name | number | identifier |" in table
    assert json.loads((tmp_path / "results.json").read_text())["config"]["num_items"] == 5


def test_ablate_layers_gives_one_row_per_layer(tiny_llama_dir, tmp_path):
    cfg = config(tiny_llama_dir, tmp_path, num_items=2, speedups=(1.0,), max_tokens=4)
    evaluate_copy(replace(cfg, ablate_layers=True, ablate_items=2), log=lambda _: None)
    (ablation,) = json.loads((tmp_path / "layer_ablation.json").read_text())
    assert [row["layer"] for row in ablation["rows"]] == list(range(NUM_LAYERS))
    for row in ablation["rows"]:
        assert row["drop"] == pytest.approx(ablation["reference"]["accuracy"] - row["accuracy"])
    # fp32 engine and fp32 HF model, both greedy: the reference row reproduces the engine at 1x.
    assert ablation["engine_1x"]["num_same_text"] == 2 and ablation["engine_1x"]["matches"]
    table = (tmp_path / "layer_ablation.md").read_text()
    assert sum(line.startswith(f"| {i} |") for line in table.splitlines() for i in range(8)) == 8


def test_probe_prompts_use_the_chat_template_when_there_is_one(smollm_tokenizer):
    ids, kind = probe_prompt_ids(smollm_tokenizer, "Repeat this name exactly: Ab Cd")
    assert kind == "chat template"
    assert smollm_tokenizer.decode(ids).startswith("<|im_start|>system")
    plain = copy.deepcopy(smollm_tokenizer)
    plain.chat_template = None
    ids, kind = probe_prompt_ids(plain, "Repeat this name exactly: Ab Cd")
    assert kind == "plain" and "<|im_start|>" not in plain.decode(ids)


@pytest.mark.parametrize("index", [0, 5])
def test_without_layer_keeps_the_kv_cache_consistent(index):
    model = tiny_hf_model("llama", vocab_size=64)
    ids = torch.tensor([[0, 0, 5, 6, 7], [9, 8, 7, 6, 5]])  # [B, T], row 0 left-padded
    mask = (torch.arange(5) >= torch.tensor([[2], [0]])).long()

    def greedy(use_cache: bool) -> torch.Tensor:
        return model.generate(
            ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=6,
            use_cache=use_cache,
            pad_token_id=0,
            eos_token_id=None,
        )

    full = greedy(True)
    with without_layer(model, index):
        assert len(decoder_layers(model)) == NUM_LAYERS - 1
        with torch.no_grad():
            ablated_logits = model(ids, attention_mask=mask).logits
        assert torch.equal(greedy(True), greedy(False))  # the cache holds the right layers
    assert [layer.self_attn.layer_idx for layer in decoder_layers(model)] == list(range(8))
    with torch.no_grad():
        assert not torch.allclose(model(ids, attention_mask=mask).logits, ablated_logits)
    assert torch.equal(greedy(True), full)  # restored


def test_eval_copy_flags():
    args = build_parser().parse_args(
        ["eval", "copy", "--model", "default", "--out", "o", "--items", "10"]
        + ["--speedups", "1,2", "--ablate-layers", "--ablate-items", "3"]
    )
    assert (args.model, args.items, args.speedups) == (["default"], 10, (1.0, 2.0))
    assert (args.ablate_layers, args.ablate_items, args.max_tokens) == (True, 3, 32)
    for bad in (["--items", "0"], ["--speedups", "0.5"], ["--ablate-items", "-1"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["eval", "copy", "--out", "o", *bad])
