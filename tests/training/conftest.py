"""Fixtures for the training tests: a hand-made E2E CSV and copies of the tiny checkpoint."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

# Three MRs with 2, 1 and 3 references (several rows per MR = several references).
E2E_ROWS = [
    ("name[Alpha], food[Thai]", "Alpha serves Thai food."),
    ("name[Alpha], food[Thai]", "Thai food is served at Alpha."),
    ("name[Beta], area[riverside]", "Beta is by the riverside."),
    ("name[Gamma], priceRange[cheap]", "Gamma is cheap."),
    ("name[Gamma], priceRange[cheap]", "Gamma is a cheap place to eat."),
    ("name[Gamma], priceRange[cheap]", "You can eat cheaply at Gamma."),
]


@pytest.fixture
def e2e_csv(tmp_path) -> Path:
    path = tmp_path / "e2e.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["mr", "ref"])
        writer.writerows(E2E_ROWS)
    return path


@pytest.fixture
def tiny_llama_copy(tmp_path, tiny_llama_dir) -> Path:
    """A private copy of the tiny Llama checkpoint that a test may add files to."""
    return Path(shutil.copytree(tiny_llama_dir, tmp_path / "tiny-llama"))
