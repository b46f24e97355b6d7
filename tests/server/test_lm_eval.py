"""lm-evaluation-harness's ``local-completions`` model scores a multiple-choice task against the
server (echo + logprobs), offline: a local task, local items, the tiny model's local tokenizer.

Each choice's log-likelihood must equal Hugging Face transformers' for the same tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import load_hf
from transformers import AutoTokenizer

TASK = "skipdecode_tiny_mc"
ITEMS = [
    {"question": "What color is the sky on a clear day?", "choices": ["blue", "green", "red"]},
    {"question": "How many legs does a cat have?", "choices": ["two", "four", "six"]},
    {"question": "Which one is a fruit?", "choices": ["carrot", "potato", "apple"]},
    {"question": "Where do fish live?", "choices": ["in water", "in trees", "in the sand"]},
]
TASK_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {items}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def write_task(directory: Path) -> None:
    items = directory / "items.jsonl"
    items.write_text("".join(json.dumps({**item, "answer": 0}) + "\n" for item in ITEMS))
    (directory / f"{TASK}.yaml").write_text(TASK_YAML.format(task=TASK, items=items))


def run_lm_eval(server, tokenizer_dir: Path, tmp_path: Path) -> Path:
    """Run the harness's CLI with no network but loopback; returns its output folder."""
    tasks, output = tmp_path / "tasks", tmp_path / "output"
    tasks.mkdir()
    write_task(tasks)
    model_args = ",".join(
        [
            "model=tiny",
            f"base_url={server.url}/v1/completions",
            f"tokenizer={tokenizer_dir}",  # a local directory: no hub look-up
            "tokenizer_backend=huggingface",
            "max_length=128",  # the test server's context
            "max_retries=1",
        ]
    )
    env = {
        **os.environ,
        "OPENAI_API_KEY": server.api_key,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf-home"),
    }
    cmd = [
        sys.executable, "-m", "lm_eval",
        "--model", "local-completions",
        "--model_args", model_args,
        "--batch_size", "4",  # several prompts per request
        "--tasks", TASK,
        "--include_path", str(tasks),
        "--output_path", str(output),
        "--log_samples",
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return output


def reference_loglikelihood(hf, tokenizer, context: str, continuation: str) -> float:
    """The continuation's log-likelihood, tokenized as the harness does (whole minus context)."""
    whole = tokenizer(context + continuation).input_ids
    num_context = len(tokenizer(context).input_ids)
    with torch.no_grad():
        logprobs = hf(torch.tensor([whole])).logits[0].float().log_softmax(dim=-1)
    return sum(logprobs[p - 1, whole[p]].item() for p in range(num_context, len(whole)))


def test_local_completions_multiple_choice(server, tiny_llama_dir, tmp_path):
    output = run_lm_eval(server, tiny_llama_dir, tmp_path)
    hf, tokenizer = load_hf(tiny_llama_dir), AutoTokenizer.from_pretrained(tiny_llama_dir)
    samples_file = next(output.rglob(f"samples_{TASK}_*.jsonl"))
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert len(samples) == len(ITEMS)
    num_correct = 0
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        arguments = [sample["arguments"][f"gen_args_{i}"] for i in range(3)]
        got = [float(resp[0][0]) for resp in sample["resps"]]
        want = [reference_loglikelihood(hf, tokenizer, a["arg_0"], a["arg_1"]) for a in arguments]
        assert got == pytest.approx(want, abs=1e-3)
        num_correct += max(range(3), key=want.__getitem__) == 0  # the answer is choice 0
    results = json.loads(next(output.rglob("results_*.json")).read_text())["results"][TASK]
    assert results["acc,none"] == pytest.approx(num_correct / len(ITEMS))
