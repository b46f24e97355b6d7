"""Soak (one minute in the suite, twenty under ``make stress``): mixed traffic with cancellations
and deliberately invalid requests; RSS growth under 5%, no KV block left, no unintended answer.
The driver is ``python -m skipdecode.benchmarks.soak``, runnable against any server."""

from __future__ import annotations

import asyncio

from reliability_helpers import API_KEY, stress_or

from skipdecode.benchmarks.soak import SoakConfig, soak

MAX_RSS_GROWTH = 0.05


def test_soak_mixed_traffic_leaks_nothing(small_server):
    config = SoakConfig(
        duration_s=stress_or(60, 1200),
        warmup_s=stress_or(10, 60),
        concurrency=8,
        max_tokens=16,
        seed=1,
    )
    report = asyncio.run(soak(small_server.url, small_server.proc.pid, config, API_KEY))
    print("\n" + report.summary())
    assert report.failures(MAX_RSS_GROWTH) == []
    # The traffic had all its parts: answers, hang-ups and refusals.
    assert report.outcomes["ok"] > 100 and report.outcomes["cancelled"] > 10
    assert report.outcomes["rejected"] > 0
