"""``skipdecode bench serve`` against a fake streaming server and a real ``skipdecode serve``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from skipdecode.benchmarks.serve_client import check_loopback
from skipdecode.cli import main

NUM_LAYERS = 8  # tests/tiny_models.py


def bench_serve(url: str, out, *extra: str) -> tuple[int, dict]:
    code = main(["bench", "serve", "--base-url", url, "--output-json", str(out), *extra])
    return code, json.loads(out.read_text())


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8000/", "http://127.4.5.6", "http://localhost:1", "http://[::1]:8000"],
)
def test_loopback_urls_are_accepted(url):
    assert check_loopback(url) == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1:8000",
        "http://example.com",
        "http://127.0.0.1.example.com",
        "http://0.0.0.0:8000",
        "ftp://127.0.0.1",
    ],
)
def test_non_loopback_urls_are_refused(url, capsys):
    with pytest.raises(ValueError, match="loopback|http"):
        check_loopback(url)
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "serve", "--base-url", url, "--num-prompts", "1"])
    assert exit_info.value.code == 2
    assert "skipdecode: error: --base-url" in capsys.readouterr().err


def test_fake_server_counts_chunks_and_forwards_fields(fake_server, tmp_path, tiny_llama_dir):
    url, fake = fake_server()
    code, payload = bench_serve(
        url, tmp_path / "serve.json",
        "--model", str(tiny_llama_dir), "--num-prompts", "5", "--input-len", "7",
        "--output-len", "6", "--concurrency", "1,3", "--skip", '{"speedup": 2}',
        "--num-warmup", "1",
    )  # fmt: skip
    assert code == 0
    assert [r["label"] for r in payload["results"]] == ["c=1", "c=3"]
    for row in payload["results"]:
        assert row["completed"] == 5 and row["num_errors"] == 0
        assert row["num_output_tokens"] == row["num_output_tokens_expected"] == 5 * 6
        assert row["token_count_source"] == "chunks"
        assert row["requests_per_s"] > 0 and row["output_tokens_per_s"] > 0
        for metric in ("ttft_ms", "itl_ms", "e2e_ms"):
            assert 0 < row[f"{metric}_p50"] <= row[f"{metric}_p99"]
        assert row["e2e_ms_p50"] >= row["ttft_ms_p50"]
    assert len(fake.bodies) == 1 + 2 * 5  # warm-up, then every prompt per concurrency
    body = fake.bodies[-1]
    assert body["ignore_eos"] is True and body["stream"] is True and body["temperature"] == 0
    assert body["skip"] == {"speedup": 2} and body["max_tokens"] == 6
    assert len(body["prompt"]) == 7 and all(isinstance(t, int) for t in body["prompt"])
    # Each run and the warm-up get prompts of their own (no server prefix cache helps a run).
    prompts = [tuple(body["prompt"]) for body in fake.bodies]
    assert len(set(prompts)) == len(prompts)


def test_prompts_per_concurrency_scales_each_run(fake_server, tmp_path, tiny_llama_dir):
    url, fake = fake_server()
    code, payload = bench_serve(
        url, tmp_path / "serve.json",
        "--model", str(tiny_llama_dir), "--prompts-per-concurrency", "2", "--input-len", "5",
        "--output-len", "3", "--concurrency", "1,4", "--num-warmup", "1",
    )  # fmt: skip
    assert code == 0
    assert [(r["label"], r["completed"]) for r in payload["results"]] == [("c=1", 2), ("c=4", 8)]
    assert [r["num_output_tokens"] for r in payload["results"]] == [2 * 3, 8 * 3]
    assert len(fake.bodies) == 1 + 2 + 8
    prompts = [tuple(body["prompt"]) for body in fake.bodies]
    assert len(set(prompts)) == len(prompts)


def test_errors_are_counted_and_fail_the_command(fake_server, tmp_path):
    url, _ = fake_server(fail_every=2)
    code, payload = bench_serve(
        url, tmp_path / "serve.json",
        "--prompt-kind", "words", "--num-prompts", "4", "--input-len", "5", "--output-len", "3",
        "--concurrency", "1", "--num-warmup", "0",
    )  # fmt: skip
    row = payload["results"][0]
    assert code == 1
    assert row["num_errors"] == 2 and row["completed"] == 2
    assert row["num_output_tokens"] == 2 * 3
    assert any("HTTP 500" in e for e in row["error_examples"])


def test_total_time_is_bounded(fake_server, tmp_path):
    url, _ = fake_server(stall_s=30)
    start = time.monotonic()
    code, payload = bench_serve(
        url, tmp_path / "serve.json",
        "--prompt-kind", "words", "--num-prompts", "3", "--concurrency", "3",
        "--num-warmup", "0", "--timeout", "1",
    )  # fmt: skip
    assert time.monotonic() - start < 10
    assert code == 1 and payload["results"][0]["num_errors"] == 3
    assert payload["results"][0]["error_examples"] == ["cut off by --timeout"]


def test_unreachable_server_is_reported(tmp_path, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the with-block ends: nothing listens
    code = main(
        ["bench", "serve", "--base-url", f"http://127.0.0.1:{port}", "--prompt-kind", "words",
         "--num-prompts", "1", "--output-json", str(tmp_path / "x.json")]
    )  # fmt: skip
    assert code == 1
    assert "warm-up request" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.fixture(scope="module")
def real_server(tiny_llama_dir):
    """``skipdecode serve`` on the tiny model, as a subprocess on a free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        sys.executable, "-m", "skipdecode.cli", "serve", "--model", str(tiny_llama_dir),
        "--dtype", "float32", "--port", str(port), "--kv-cache-memory", "0.05",
        "--max-model-len", "128", "--log-level", "warning",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "SKIPDECODE_API_KEY"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.25)
        else:
            raise RuntimeError(f"server did not start: {proc.stderr.read().decode()[-2000:]}")
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_real_server_with_skip(real_server, tiny_llama_dir, tmp_path):
    code, payload = bench_serve(
        real_server, tmp_path / "serve.json",
        "--model", str(tiny_llama_dir), "--num-prompts", "4", "--input-len", "9",
        "--output-len", "12", "--concurrency", "2", "--skip", '{"speedup": 2}',
    )  # fmt: skip
    row = payload["results"][0]
    assert code == 0 and row["completed"] == 4 and row["num_errors"] == 0
    assert row["token_count_source"] == "usage"
    assert row["num_output_tokens"] == row["num_output_tokens_expected"] == 4 * 12
    assert row["total_tokens_per_s"] > row["output_tokens_per_s"] > 0
    # Each request's usage adds up: every generated token could have run all layers.
    assert row["layers_computed"] + row["layers_skipped"] == 4 * 12 * NUM_LAYERS
    assert row["layers_skipped"] > 0
    expected = 4 * 12 * NUM_LAYERS / row["layers_computed"]
    assert row["theoretical_speedup"] == pytest.approx(expected)
