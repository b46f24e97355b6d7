"""A real Prometheus scrapes Metrics.render() over HTTP and sees the values that were observed."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from deploy_helpers import MODEL_NAME, STEPS

from skipdecode.server.metrics import Metrics

DEADLINE_S = 30.0  # for a value to show up once Prometheus is ready
STARTUP_S = 30.0  # for Prometheus to become ready (a busy CI machine is slow)


def serve_metrics(metrics: Metrics) -> ThreadingHTTPServer:
    """GET /metrics on 127.0.0.1 (random port), from a background thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/metrics":
                self.send_error(404)
                return
            body, content_type = metrics.render()
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # keep the test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Prometheus:
    """A prometheus process scraping one target every second; its HTTP API on a loopback port."""

    def __init__(self, binary: str, target: str, workdir: Path) -> None:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": "skipdecode", "static_configs": [{"targets": [target]}]}
            ],
        }
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"prometheus exited:\n{self.log_tail()}"
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        pytest.fail(f"prometheus not ready after {STARTUP_S}s:\n{self.log_tail()}")

    def query(self, promql: str) -> list[dict]:
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=5) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def wait_for(self, promql: str, expected: float) -> dict:
        """Poll the query until one series has the expected value; that series."""
        deadline, result = time.monotonic() + DEADLINE_S, []
        while time.monotonic() < deadline:
            result = self.query(promql)
            if len(result) == 1 and float(result[0]["value"][1]) == expected:
                return result[0]
            time.sleep(0.25)
        pytest.fail(f"{promql}: wanted {expected}, last got {result}\n{self.log_tail()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()


@pytest.fixture
def scraped(prometheus_bin, tmp_path) -> Iterator[tuple[Metrics, Prometheus]]:
    metrics = Metrics(MODEL_NAME)
    server = serve_metrics(metrics)
    prometheus = Prometheus(prometheus_bin, f"127.0.0.1:{server.server_address[1]}", tmp_path)
    try:
        prometheus.wait_ready()
        yield metrics, prometheus
    finally:
        prometheus.stop()
        server.shutdown()
        server.server_close()


def test_prometheus_scrapes_the_observed_values(scraped):
    metrics, prometheus = scraped
    metrics.observe_step(STEPS[0])
    series = prometheus.wait_for(
        "skipdecode:generation_tokens_total", STEPS[0].num_generation_tokens
    )
    assert series["metric"]["model_name"] == MODEL_NAME
    assert series["metric"]["job"] == "skipdecode"
    prometheus.wait_for('up{job="skipdecode"}', 1)
    prometheus.wait_for("skipdecode:token_depth_count", len(STEPS[0].generated_depths))

    # Later observations reach Prometheus on the following scrapes.
    metrics.observe_step(STEPS[1])
    prometheus.wait_for("skipdecode:kv_cache_usage_perc", STEPS[1].kv_cache_usage)
    prometheus.wait_for(
        "skipdecode:generation_tokens_total",
        sum(step.num_generation_tokens for step in STEPS[:2]),
    )
