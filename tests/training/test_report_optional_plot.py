"""The E2E and chat reports without matplotlib: JSON and markdown, no plot, one line saying why."""

from __future__ import annotations

import json
import sys

import pytest

from skipdecode.training.chat_report import write_chat_reports
from skipdecode.training.report import write_reports

SCHEDULE = {"min_depth": 4, "max_depth": 4, "num_layers": 4, "decay_tokens": 24, "warmup_layers": 1}
E2E_RESULTS = {
    "config": {
        "split": "val",
        "num_mrs": 2,
        "split_rule": "md5",
        "val_percent": 15,
        "max_tokens": 80,
        "num_resamples": 10,
    },
    "models": [
        {
            "label": "tiny",
            "rows": [
                {
                    "target_speedup": 1.0,
                    "mean_theoretical_speedup": 1.0,
                    "schedule": SCHEDULE,
                    "bleu": 40.0,
                    "bleu_ci": [35.0, 45.0],
                    "rouge_l": 60.0,
                    "rouge_l_ci": [55.0, 65.0],
                    "tokens_per_s": 100.0,
                    "mean_generated_tokens": 20.0,
                }
            ],
        }
    ],
}
CHAT_ROW = {
    "target_speedup": 1.0,
    "mean_theoretical_speedup": 1.0,
    "schedule": SCHEDULE,
    "perplexity": 8.0,
    "perplexity_ci": [7.0, 9.0],
    "rouge_l_vs_reference": 100.0,
    "rouge_l_ci": [100.0, 100.0],
    "first_difference": 80.0,
    "first_difference_ci": [80.0, 80.0],
    "repeated_4grams_percent": 1.0,
    "repeated_4grams_ci": [0.0, 2.0],
    "tokens_per_s": 50.0,
    "mean_generated_tokens": 30.0,
}
CHAT_RESULTS = {
    "config": {
        "split": "val",
        "data_record": {"file": "chat.jsonl", "num_prompts": 1},
        "max_prompt_tokens": 512,
        "max_answer_tokens": 128,
        "max_tokens": 128,
    },
    "reference_model": "tiny",
    "prompts": [{"id": "p0", "messages": [{"role": "user", "content": "Hello?"}]}],
    "models": [{"label": "tiny", "rows": [CHAT_ROW]}],
}
SKIPPED = "skipped quality_vs_speedup.png: matplotlib is not installed (pip install matplotlib)"


@pytest.fixture
def no_matplotlib(monkeypatch):
    # A None entry in sys.modules makes `import matplotlib` raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)


def test_e2e_report_without_matplotlib_skips_only_the_plot(tmp_path, no_matplotlib, capsys):
    write_reports(E2E_RESULTS, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text()) == E2E_RESULTS
    assert (
        "| tiny | 1x | 1.00x | full (4) | 40.0 [35.0, 45.0]"
        in (tmp_path / "results.md").read_text()
    )
    assert not (tmp_path / "quality_vs_speedup.png").exists()
    assert capsys.readouterr().out == SKIPPED + "\n"


def test_chat_report_without_matplotlib_skips_only_the_plot(tmp_path, no_matplotlib):
    lines: list[str] = []
    rows = {("tiny", 1.0): {"texts": ["Hi there."]}}
    write_chat_reports(CHAT_RESULTS, rows, tmp_path, log=lines.append)
    assert json.loads((tmp_path / "results.json").read_text()) == CHAT_RESULTS
    assert "| tiny | 1x |" in (tmp_path / "results.md").read_text()
    assert "**tiny, 1x**: Hi there." in (tmp_path / "side_by_side.md").read_text()
    assert not (tmp_path / "quality_vs_speedup.png").exists()
    assert lines == [SKIPPED]


def test_e2e_report_with_matplotlib_draws_the_plot(tmp_path):
    pytest.importorskip("matplotlib")
    lines: list[str] = []
    write_reports(E2E_RESULTS, tmp_path, log=lines.append)
    assert (tmp_path / "quality_vs_speedup.png").read_bytes()[:4] == b"\x89PNG"
    assert lines == []
