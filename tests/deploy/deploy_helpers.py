"""Reading what the deployment files reference: exported series, PromQL metric names, panels."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from skipdecode.server.metrics import Metrics
from skipdecode.stats import RequestStats, StepStats

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
NAME_RE = re.compile(r"skipdecode:[A-Za-z0-9_:]+")
MODEL_NAME = "test-model"

# Two steps and two requests whose figures the tests recompute from these inputs.
STEPS = [
    StepStats(
        num_running=3,
        num_waiting=2,
        kv_cache_usage=0.25,
        num_preemptions=0,
        num_prompt_tokens=40,
        num_generation_tokens=3,
        num_layers=30,
        generated_depths=[30, 30, 22],
        num_depth_buckets=2,
        num_sequences=3,
    ),
    StepStats(
        num_running=2,
        num_waiting=0,
        kv_cache_usage=0.5,
        num_preemptions=1,
        num_prompt_tokens=7,
        num_generation_tokens=2,
        num_layers=30,
        generated_depths=[8, 2],
        num_depth_buckets=2,
        num_sequences=2,
    ),
]
REQUESTS = [
    RequestStats(
        finish_reason="length",
        num_prompt_tokens=20,
        num_generation_tokens=4,
        queue_seconds=0.004,
        time_to_first_token=0.3,
        inter_token_latencies=[0.02, 0.03, 0.5],
        e2e_seconds=0.9,
        theoretical_speedup=1.6,
        num_layers_computed=75,
        num_layers_skipped=45,
    ),
    RequestStats(
        finish_reason="abort",
        num_prompt_tokens=9,
        num_generation_tokens=0,
        queue_seconds=None,
        time_to_first_token=None,
        inter_token_latencies=[],
        e2e_seconds=12.0,
        theoretical_speedup=1.0,
        num_layers_computed=0,
        num_layers_skipped=0,
    ),
]


def feed(metrics: Metrics) -> Metrics:
    """Observe STEPS and REQUESTS, in order."""
    for step in STEPS:
        metrics.observe_step(step)
    for request in REQUESTS:
        metrics.observe_request(request)
    return metrics


def exported_series(metrics: Metrics) -> dict[str, list]:
    """Sample name (with _total/_bucket/_sum/_count) -> its samples, as a scraper parses them."""
    body, _ = metrics.render()
    series: dict[str, list] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            series.setdefault(sample.name, []).append(sample)
    return series


def family(sample_name: str) -> str:
    """The metric a sample belongs to: its name less _total, _bucket, _sum or _count."""
    for suffix in ("_total", "_bucket", "_sum", "_count"):
        if sample_name.endswith(suffix):
            return sample_name.removesuffix(suffix)
    return sample_name


def metric_names(expr: str) -> set[str]:
    return set(NAME_RE.findall(expr))


def load_dashboard(path: Path) -> dict:
    return json.loads(path.read_text())


def iter_panels(dashboard: dict) -> Iterator[dict]:
    """Every panel, those nested in collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs(dashboard: dict) -> list[str]:
    """PromQL of every panel target and of every query variable."""
    exprs = [t["expr"] for p in iter_panels(dashboard) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if variable["type"] == "query":
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def load_rules(path: Path) -> list[dict]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def to_plain_promql(expr: str) -> str:
    """Grafana's template variables replaced by values, so that Prometheus can parse the query."""
    expr = re.sub(r"label_values\((\S+?), *\w+\)", r"\1", expr)  # a variable query: its selector
    for variable, value in (("$__rate_interval", "1m"), ("$__range", "30m"), ("$model_name", ".*")):
        expr = expr.replace(variable, value)
    return expr
