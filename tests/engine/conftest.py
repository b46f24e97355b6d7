"""Fixtures for the engine tests: the compiled CPU kernels."""

from __future__ import annotations

import os
import shutil

import pytest

from skipdecode.model_runner.cpu_kernels import load_kernels


@pytest.fixture(scope="session")
def kernels():
    """The CPU kernel module; skipped only where no C++ compiler exists."""
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler: the engine uses the PyTorch path (tested everywhere else)")
    module = load_kernels()
    assert module is not None, "a machine with a C++ compiler must build the kernels"
    return module
