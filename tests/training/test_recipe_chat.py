"""The chat recipe runs every stage on the tiny model (teacher answers, LoRA distillation, eval
chat, zero-shot E2E), writes a servable adapter, and skips finished stages on a rerun."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from skipdecode.datasets import split_of
from skipdecode.model_runner.adapter import load_adapter

RECIPE = Path(__file__).resolve().parents[2] / "training" / "recipe_chat.sh"
TOPICS = ["tea", "maps", "rust", "jazz", "bees", "snow", "kites", "clay"]


def write_chats(path: Path, count: int) -> list[str]:
    """``count`` one-turn chats in the OpenAI JSONL shape; returns their ids."""
    ids = []
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            topic = TOPICS[i % len(TOPICS)]
            messages = [
                {"role": "user", "content": f"Tell me about {topic} number {i}."},
                {"role": "assistant", "content": f"{topic.title()} {i} is nice."},
            ]
            ids.append(f"chat{i}")
            handle.write(json.dumps({"id": ids[-1], "messages": messages}) + "\n")
    return ids


def test_chat_recipe_runs_all_stages_then_skips_them(tiny_llama_dir, e2e_csv, tmp_path):
    chats = tmp_path / "chats.jsonl"
    ids = write_chats(chats, 300)
    env = {
        **os.environ,
        "BASE": str(tiny_llama_dir),
        "DATA": str(chats),
        "E2E_DATA": str(e2e_csv),
        "PROMPTS": "6",
        "COPY_PROMPTS": "5",
        "ANSWER_TOKENS": "6",
        "MAX_STEPS": "2",
        "BATCH": "3",
        "RANK": "4",
        "ALPHA": "8",
        "SPEEDUPS_TRAIN": "1,2",
        "DEPTH_RATIO": "2",
        "HORIZON_TOKENS": "8",
        "SPEEDUPS_EVAL": "1,2",
        "SPEEDUPS_E2E": "1,2",
        "EVAL_CONVERSATIONS": "4",
        "MAX_TOKENS": "4",
        "DEVICE": "cpu",
    }
    out = tmp_path / "recipe"
    first = subprocess.run(
        ["bash", str(RECIPE), str(out)], env=env, capture_output=True, text=True, timeout=600
    )
    assert first.returncode == 0, first.stderr[-3000:]

    # Stage 1: the teacher answered exactly the first 6 training prompts and the 5 copy prompts,
    # and the adapter loads.
    answers = [json.loads(line) for line in (out / "skip/teacher/answers.jsonl").open()]
    train_ids = [i for i in ids if split_of(i, 2, 4) == "train"][:6]
    assert [a["id"] for a in answers] == train_ids + [f"copy-{i}" for i in range(5)]
    assert all(1 <= len(a["answer_ids"]) <= 6 for a in answers)
    adapter = load_adapter(out / "skip" / "adapter")
    assert adapter.rank == 4 and adapter.scale == 2.0
    assert adapter.apply_to == "skipping"  # the recipe's default: a gated adapter
    schedule = json.loads((out / "skip/adapter/skip_schedule.json").read_text())
    assert schedule["default"]["speedup"] == 1.0  # full depth stays the default
    assert schedule["data"]["kind"] == "chat" and schedule["objective"]["name"] == "distill"
    family = schedule["preset_family"]  # the shape knobs reach the checkpoint
    assert (family["depth_ratio"], family["horizon_tokens"]) == (2.0, 8)
    copies = schedule["data"]["copy_prompts"]
    assert copies["num_prompts"] == 5 and 0 <= copies["num_kept"] <= 5

    # Stage 2: both models at both speedups, on held-out conversations only.
    results = json.loads((out / "eval" / "results.json").read_text())
    assert [m["label"] for m in results["models"]] == ["base", "skip-aware"]
    assert all(len(m["rows"]) == 2 for m in results["models"])
    assert {split_of(p["id"], 2, 4) for p in results["prompts"]} == {"test"}
    base_1x = results["models"][0]["rows"][0]
    assert base_1x["rouge_l_vs_reference"] == 100.0  # the reference is base at 1x itself
    gated_1x = results["models"][1]["rows"][0]
    assert gated_1x["rouge_l_vs_reference"] == 100.0  # gated: 1x answers are the base model's
    assert gated_1x["perplexity"] == pytest.approx(base_1x["perplexity"], rel=1e-5)
    assert (out / "eval" / "quality_vs_speedup.png").stat().st_size > 0
    assert "Side by side" in (out / "eval" / "side_by_side.md").read_text()

    # Stage 3: zero-shot E2E for both models.
    e2e = json.loads((out / "e2e" / "results.json").read_text())
    assert [m["label"] for m in e2e["models"]] == ["base", "skip-aware"]

    second = subprocess.run(
        ["bash", str(RECIPE), str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("skipping") == 3
