"""The replica runtime's settings (RayConfig, the serve flags) and the merged metrics view."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.parser import text_string_to_metric_families

from skipdecode.cli import build_parser
from skipdecode.cli_args import ray_config
from skipdecode.server.cluster import merge_families, render_merged
from skipdecode.server.config import RayConfig


def parse(*flags: str):
    return ray_config(build_parser().parse_args(["serve", *flags]))


def test_no_ray_flag_means_a_single_process():
    assert parse("--port", "9000") is None


def test_flags_become_the_ray_config():
    config = parse("--replicas", "2", "--num-gpus-per-replica", "1", "--autoscale", "1:8")
    assert config == RayConfig(replicas=2, num_gpus_per_replica=1.0, autoscale=(1, 8))
    assert parse("--autoscale", "3:5").replicas == 3  # starts at the minimum
    assert parse("--ray-address", "auto").address == "auto"


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (("--replicas", "0"), "replicas"),
        (("--autoscale", "4:2"), "autoscale"),
        (("--autoscale", "2"), "--autoscale"),
        (("--autoscale", "a:b"), "--autoscale"),
        (("--replicas", "9", "--autoscale", "1:8"), "replicas"),
        (("--num-cpus-per-replica", "-1"), "num_cpus_per_replica"),
        (("--threads-per-replica", "0"), "threads_per_replica"),
        (("--target-ongoing-requests", "0"), "target_ongoing_requests"),
        (("--max-ongoing-requests", "0"), "max_ongoing_requests"),
    ],
)
def test_bad_values_name_their_field(flags, field):
    with pytest.raises(ValueError, match=field):
        parse(*flags)


def test_torch_threads_default_to_the_replicas_cpus():
    assert RayConfig().torch_threads == 1
    assert RayConfig(num_cpus_per_replica=4).torch_threads == 4
    assert RayConfig(num_cpus_per_replica=0.5).torch_threads == 1
    assert RayConfig(num_cpus_per_replica=4, threads_per_replica=2).torch_threads == 2


def replica_families(running: float, finished: float) -> list:
    registry = CollectorRegistry()
    Gauge("demo_running", "Running.", ["model_name"], registry=registry).labels("m").set(running)
    Counter("demo_done", "Done.", ["model_name"], registry=registry).labels("m").inc(finished)
    return list(registry.collect())


def test_merged_metrics_keep_every_replica_apart_under_one_family():
    text = render_merged({"b": replica_families(2, 5), "a": replica_families(3, 7)}).decode()
    assert text.count("# TYPE demo_running gauge") == 1  # one family, not one per replica
    families = {f.name: f for f in text_string_to_metric_families(text)}
    running = {s.labels["replica"]: s.value for s in families["demo_running"].samples}
    assert running == {"a": 3.0, "b": 2.0}
    done = {
        s.labels["replica"]: s.value
        for s in families["demo_done"].samples
        if s.name == "demo_done_total"
    }
    assert done == {"a": 7.0, "b": 5.0}
    assert all(s.labels["model_name"] == "m" for s in families["demo_running"].samples)


def test_merge_orders_replicas_stably():
    merged = merge_families({"z": replica_families(1, 1), "y": replica_families(1, 1)})
    gauge = next(f for f in merged if f.name == "demo_running")
    assert [s.labels["replica"] for s in gauge.samples] == ["y", "z"]
