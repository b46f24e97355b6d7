"""Soak: minutes of mixed traffic against one server, then its memory, KV blocks and errors.

Traffic: completions and chat, streamed and not, skip settings from full depth to about 3x,
some clients that hang up at a random point, and a few deliberately invalid requests (which
must get a 400). After a warm-up the server's RSS (``/proc/PID/status``) is the baseline; at
the end, once idle, it must have grown less than ``--max-rss-growth``, no KV block may be held,
and every answer must be one the traffic asked for. Prints the figures; exit status 1 if not.

    skipdecode serve --model DIR --port 8000 &
    python -m skipdecode.benchmarks.soak --base-url http://127.0.0.1:8000 --pid $! --minutes 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from skipdecode.benchmarks.common import percentiles
from skipdecode.benchmarks.serve_client import WORDS, check_loopback


@dataclass(frozen=True)
class SoakConfig:
    """How long and how hard to drive the server."""

    duration_s: float = 600.0
    warmup_s: float = 20.0  # traffic before the RSS baseline is taken
    concurrency: int = 16  # requests in flight at once
    max_tokens: int = 16
    cancel_fraction: float = 0.2  # clients that hang up at a random point
    invalid_fraction: float = 0.05  # requests built to be refused with a 400
    seed: int = 0


@dataclass
class SoakReport:
    """The figures of one soak; ``passed`` is the verdict."""

    duration_s: float = 0.0
    outcomes: Counter = field(default_factory=Counter)  # ok / cancelled / rejected / unexpected
    unexpected: list[str] = field(default_factory=list)  # the first few, for the log
    latencies_s: list[float] = field(default_factory=list)  # completed requests, end to end
    rss_start: int = 0  # bytes, after the warm-up
    rss_peak: int = 0
    rss_end: int = 0  # once idle again
    end_stats: dict = field(default_factory=dict)  # /internal/stats at the end

    @property
    def rss_growth(self) -> float:
        return (self.rss_end - self.rss_start) / self.rss_start if self.rss_start else 0.0

    def failures(self, max_rss_growth: float) -> list[str]:
        problems = [f"unexpected answer: {u}" for u in self.unexpected[:5]]
        if self.outcomes["unexpected"]:
            problems.append(f"{self.outcomes['unexpected']} unexpected answers")
        if self.rss_growth >= max_rss_growth:
            problems.append(f"RSS grew {self.rss_growth:.1%} (limit {max_rss_growth:.0%})")
        held = {k: self.end_stats.get(k) for k in ("kv_used_blocks", "num_unfinished")}
        if any(held.values()):
            problems.append(f"left behind: {held}")
        return problems

    def summary(self) -> str:
        mib = 1 << 20
        lat = percentiles(self.latencies_s, "latency", scale=1000.0)
        return (
            f"soak {self.duration_s:.0f}s: {sum(self.outcomes.values())} requests"
            f" {dict(self.outcomes)}\n"
            f"RSS start {self.rss_start / mib:.1f} MiB, peak {self.rss_peak / mib:.1f} MiB,"
            f" end {self.rss_end / mib:.1f} MiB, growth {self.rss_growth:+.2%}\n"
            f"end: kv_used_blocks={self.end_stats.get('kv_used_blocks')}"
            f" num_unfinished={self.end_stats.get('num_unfinished')}\n"
            f"latency ms (completed): "
            + ", ".join(f"{k.removeprefix('latency_')} {v:.0f}" for k, v in lat.items())
        )


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def skip_menu(num_layers: int) -> list[dict | None]:
    """Full depth to about 3x: the server default, presets, and explicit shallow depths."""
    third = max(2, num_layers // 3)
    return [
        None,
        {},
        {"speedup": 1.5},
        {"speedup": 2.0},
        {"warmup_layers": 1, "max_depth": third + 1, "min_depth": third, "decay_tokens": 8},
    ]


def build_request(rng: random.Random, model: str, menu: list, config: SoakConfig) -> tuple:
    """(path, body, is_invalid) of one random request."""
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 10)))
    body: dict = {
        "model": model,
        "max_tokens": rng.randint(1, config.max_tokens),
        "temperature": rng.choice([0.0, 0.7, 1.0]),
        "seed": rng.randint(0, 1000),
        "stream": rng.random() < 0.5,
        "ignore_eos": rng.random() < 0.5,
    }
    if rng.random() < 0.5:
        path = "/v1/completions"
        body["prompt"] = words
    else:
        path = "/v1/chat/completions"
        body["messages"] = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": words},
        ]
    skip = rng.choice(menu)
    if skip is not None:
        body["skip"] = skip
    is_invalid = rng.random() < config.invalid_fraction
    if is_invalid:
        body.update(rng.choice([{"temperature": -1}, {"n": 0}, {"skip": {"max_depth": 10**6}}]))
    return path, body, is_invalid


async def run_one(client: httpx.AsyncClient, rng: random.Random, request: tuple) -> str:
    """Send one request; returns its outcome (or ``unexpected: ...``)."""
    cancel_after = rng.randint(0, 6) if rng.random() < 0.2 else None  # chunks, for streams
    cancel_at_s = rng.uniform(0.0, 0.2) if cancel_after is None and rng.random() < 0.1 else None
    try:
        return await asyncio.wait_for(_send(client, request, cancel_after), cancel_at_s)
    except asyncio.TimeoutError:  # hung up before the answer was complete
        return "cancelled"


async def _send(client: httpx.AsyncClient, request: tuple, cancel_after: int | None) -> str:
    path, body, is_invalid = request
    if body["stream"]:
        return await _stream(client, path, body, is_invalid, cancel_after)
    response = await client.post(path, json=body)
    return _judge(response.status_code, response.text, is_invalid)


async def _stream(client, path, body, is_invalid, cancel_after) -> str:
    async with client.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            return _judge(response.status_code, (await response.aread()).decode(), is_invalid)
        events = []
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if cancel_after is not None and len(events) > cancel_after:
                    return "cancelled"  # leaving the block hangs up mid-stream
    if is_invalid or not events or events[-1] != "[DONE]":
        return f"unexpected: stream ended with {events[-1:]} (invalid={is_invalid})"
    errors = [e for e in events[:-1] if "error" in json.loads(e)]
    return f"unexpected: error event {errors[0]}" if errors else "ok"


def _judge(status: int, text: str, is_invalid: bool) -> str:
    if is_invalid:
        return "rejected" if status == 400 else f"unexpected: {status} for an invalid request"
    return "ok" if status == 200 else f"unexpected: {status} {text[:200]}"


async def soak(base_url: str, pid: int, config: SoakConfig, api_key: str | None = None):
    """Drive the server for ``config.duration_s``; returns the SoakReport."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    report, rng = SoakReport(), random.Random(config.seed)
    limits = httpx.Limits(max_connections=config.concurrency + 4)
    async with httpx.AsyncClient(
        base_url=check_loopback(base_url), headers=headers, timeout=120, limits=limits
    ) as client:
        card = (await client.get("/v1/models")).json()["data"][0]
        menu = skip_menu(card["num_layers"])
        start = time.monotonic()
        deadline = start + config.duration_s

        async def worker(worker_rng: random.Random) -> None:
            while time.monotonic() < deadline:
                request = build_request(worker_rng, card["id"], menu, config)
                began = time.monotonic()
                outcome = await run_one(client, worker_rng, request)
                if outcome == "ok":
                    report.latencies_s.append(time.monotonic() - began)
                if outcome.startswith("unexpected"):
                    report.unexpected.append(outcome)
                    outcome = "unexpected"
                report.outcomes[outcome] += 1

        async def watch_rss() -> None:
            await asyncio.sleep(min(config.warmup_s, config.duration_s / 2))
            report.rss_start = report.rss_peak = rss_bytes(pid)
            while time.monotonic() < deadline:
                report.rss_peak = max(report.rss_peak, rss_bytes(pid))
                await asyncio.sleep(1.0)

        workers = [worker(random.Random(rng.random())) for _ in range(config.concurrency)]
        await asyncio.gather(watch_rss(), *workers)
        report.duration_s = time.monotonic() - start
        report.end_stats = await _wait_idle(client)
    report.rss_end = rss_bytes(pid)
    return report


async def _wait_idle(client: httpx.AsyncClient, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        stats = (await client.get("/internal/stats")).json()
        if not (stats["num_unfinished"] or stats["kv_used_blocks"]) or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.2)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", required=True, help="a server on this machine (loopback)")
    parser.add_argument("--pid", type=int, required=True, help="the server's process id (RSS)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-rss-growth", type=float, default=0.05, help="fraction (0.05 = 5%%)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    duration = args.minutes * 60
    config = SoakConfig(
        duration_s=duration,
        warmup_s=min(60.0, duration / 5),
        concurrency=args.concurrency,
        max_tokens=args.max_tokens,
        seed=args.seed,
    )
    report = asyncio.run(soak(args.base_url, args.pid, config, args.api_key))
    print(report.summary())
    problems = report.failures(args.max_rss_growth)
    print("PASS" if not problems else "FAIL\n" + "\n".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(parser)
    sys.exit(run(parser.parse_args()))
