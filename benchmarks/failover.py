"""``skipdecode bench failover``: kill one replica of ``serve --replicas N`` under load.

Keeps ``--workers`` clients sending back-to-back completions, kills the process of one replica
(SIGKILL, from ``/internal/stats``'s replica list) after ``--kill-after`` seconds, and records
every request's start, end and outcome. Reports the requests that failed (and whether they had
started before the kill), how long until Ray Serve's replacement reports in, and how long until
it has served a request. The server must run on this machine (the replica pids are local).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from skipdecode.benchmarks.serve_client import check_loopback


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", required=True, help="serve --replicas N, on this machine")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--model", default=None, help="the served model name (default: first)")
    parser.add_argument("--workers", type=int, default=8, help="clients sending back to back")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--kill-after", type=float, default=10.0, help="seconds into the run")
    parser.add_argument("--duration", type=float, default=90.0, help="seconds of load in all")
    parser.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")
    parser.add_argument("--output-json", default=None)
    parser.set_defaults(func=run)


def _replicas(client: httpx.Client) -> dict[str, dict]:
    response = client.get("/internal/stats")
    response.raise_for_status()
    replicas = response.json().get("replicas")
    if replicas is None:
        raise SystemExit("this server has no replicas (start it with serve --replicas N)")
    return replicas


def requests_by_replica(metrics_text: str) -> dict[str, float]:
    """Finished requests per replica, from the merged ``/metrics`` of ``serve --replicas N``."""
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "skipdecode:request_success":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    replica = sample.labels["replica"]
                    counts[replica] = counts.get(replica, 0.0) + sample.value
    return counts


def run(args: argparse.Namespace) -> int:
    check_loopback(args.base_url)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    client = httpx.Client(base_url=args.base_url, headers=headers, timeout=args.timeout)
    model = args.model or client.get("/v1/models").json()["data"][0]["id"]
    before = _replicas(client)
    victim, victim_stats = sorted(before.items())[0]
    body = {"model": model, "prompt": "Tell me a story.", "max_tokens": args.max_tokens}
    body.update(ignore_eos=True, temperature=0)
    records: list[dict] = []
    start = time.monotonic()
    stop = threading.Event()

    def worker() -> None:
        with httpx.Client(base_url=args.base_url, headers=headers, timeout=args.timeout) as c:
            while not stop.is_set():
                began = time.monotonic() - start
                try:
                    outcome = (
                        "ok"
                        if c.post("/v1/completions", json=body).status_code == 200
                        else "http-error"
                    )
                except httpx.TimeoutException:
                    outcome = "timeout"
                except httpx.TransportError:
                    outcome = "transport-error"
                records.append(
                    {"start": began, "end": time.monotonic() - start, "outcome": outcome}
                )

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.workers)]
    for thread in threads:
        thread.start()
    time.sleep(args.kill_after)
    os.kill(victim_stats["pid"], signal.SIGKILL)
    killed_at = time.monotonic() - start
    reported_at = served_at = None
    while time.monotonic() - start < args.duration:
        now = time.monotonic() - start
        newcomers = set(_replicas(client)) - set(before)
        if newcomers and reported_at is None:
            reported_at = now
        served = requests_by_replica(client.get("/metrics").text) if newcomers else {}
        if served_at is None and any(served.get(r, 0) for r in newcomers):
            served_at = now
        time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(timeout=args.timeout)
    failed = [r for r in records if r["outcome"] != "ok"]
    result = {
        "workers": args.workers,
        "max_tokens": args.max_tokens,
        "replicas": len(before),
        "requests": len(records),
        "failed": len(failed),
        "failed_started_before_kill": sum(r["start"] < killed_at for r in failed),
        "failed_outcomes": sorted({r["outcome"] for r in failed}),
        "killed_at_s": round(killed_at, 2),
        "replacement_reported_after_s": None
        if reported_at is None
        else round(reported_at - killed_at, 2),
        "replacement_served_after_s": None
        if served_at is None
        else round(served_at - killed_at, 2),
        "last_failure_after_kill_s": max((r["end"] - killed_at for r in failed), default=None),
        "hangs": sum(r["outcome"] == "timeout" for r in records),
    }
    print(json.dumps(result, indent=2))
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(
            json.dumps({"result": result, "records": records}, indent=1)
        )
    return 0 if result["hangs"] == 0 else 1
