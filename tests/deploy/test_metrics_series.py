"""Metrics: each observation moves exactly the series it should, by the amounts fed in."""

from __future__ import annotations

import threading

import pytest
from deploy_helpers import MODEL_NAME, REQUESTS, STEPS, exported_series
from prometheus_client import CollectorRegistry

from skipdecode.server.metrics import Metrics
from skipdecode.stats import RequestStats, StepStats

LABELS = {"model_name": MODEL_NAME}


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value("skipdecode:" + name, {**LABELS, **labels})


def bucket(metrics: Metrics, name: str, le: float) -> float | None:
    return value(metrics, name + "_bucket", le=str(float(le)))


def test_step_sets_gauges_to_the_last_step_and_adds_up_counters(fed_metrics):
    last = STEPS[-1]
    assert value(fed_metrics, "num_requests_running") == last.num_running
    assert value(fed_metrics, "num_requests_waiting") == last.num_waiting
    assert value(fed_metrics, "kv_cache_usage_perc") == last.kv_cache_usage
    for name, field in [
        ("num_preemptions_total", "num_preemptions"),
        ("prompt_tokens_total", "num_prompt_tokens"),
        ("generation_tokens_total", "num_generation_tokens"),
    ]:
        assert value(fed_metrics, name) == sum(getattr(s, field) for s in STEPS), name


def test_layer_counters_follow_the_generated_depths(fed_metrics):
    depths = [d for s in STEPS for d in s.generated_depths]
    num_layers = STEPS[0].num_layers
    assert value(fed_metrics, "layers_computed_total") == sum(depths)
    assert value(fed_metrics, "layers_skipped_total") == num_layers * len(depths) - sum(depths)


def test_token_depth_histogram_counts_each_generated_token_in_its_bucket(fed_metrics):
    depths = [d for s in STEPS for d in s.generated_depths]
    assert value(fed_metrics, "token_depth_count") == len(depths)
    assert value(fed_metrics, "token_depth_sum") == sum(depths)
    for le in (1, 2, 8, 21, 22, 29, 30, 128):
        assert bucket(fed_metrics, "token_depth", le) == sum(d <= le for d in depths), le


def test_depth_buckets_per_step_observes_one_value_per_step(fed_metrics):
    assert value(fed_metrics, "depth_buckets_per_step_count") == len(STEPS)
    assert value(fed_metrics, "depth_buckets_per_step_sum") == sum(
        s.num_depth_buckets for s in STEPS
    )
    assert bucket(fed_metrics, "depth_buckets_per_step", 1) == 0
    assert bucket(fed_metrics, "depth_buckets_per_step", 2) == len(STEPS)


def test_request_success_counts_by_finish_reason(fed_metrics):
    for reason in ("stop", "length", "abort"):
        expected = sum(r.finish_reason == reason for r in REQUESTS)
        assert value(fed_metrics, "request_success_total", finished_reason=reason) == expected


def test_stop_series_exists_at_zero_before_any_request():
    metrics = Metrics(MODEL_NAME)
    assert value(metrics, "request_success_total", finished_reason="stop") == 0


def test_latency_histograms_skip_what_a_request_never_reached(fed_metrics):
    # The aborted request was never scheduled: no queue time, no first token, no speedup.
    reached = [r for r in REQUESTS if r.time_to_first_token is not None]
    assert value(fed_metrics, "time_to_first_token_seconds_count") == len(reached)
    assert value(fed_metrics, "time_to_first_token_seconds_sum") == pytest.approx(
        sum(r.time_to_first_token for r in reached)
    )
    assert value(fed_metrics, "request_queue_time_seconds_count") == len(reached)
    assert value(fed_metrics, "theoretical_speedup_count") == len(reached)
    assert value(fed_metrics, "theoretical_speedup_sum") == pytest.approx(
        sum(r.theoretical_speedup for r in reached)
    )
    assert value(fed_metrics, "e2e_request_latency_seconds_count") == len(REQUESTS)
    assert value(fed_metrics, "e2e_request_latency_seconds_sum") == pytest.approx(
        sum(r.e2e_seconds for r in REQUESTS)
    )


def test_inter_token_latency_observes_every_gap(fed_metrics):
    gaps = [g for r in REQUESTS for g in r.inter_token_latencies]
    assert value(fed_metrics, "inter_token_latency_seconds_count") == len(gaps)
    assert value(fed_metrics, "inter_token_latency_seconds_sum") == pytest.approx(sum(gaps))
    assert bucket(fed_metrics, "inter_token_latency_seconds", 0.1) == sum(g <= 0.1 for g in gaps)


def test_speedup_lands_in_its_bucket():
    metrics = Metrics(MODEL_NAME)
    metrics.observe_request(_request(theoretical_speedup=2.4))
    assert bucket(metrics, "theoretical_speedup", 2.25) == 0
    assert bucket(metrics, "theoretical_speedup", 2.5) == 1


def test_step_without_generated_tokens_leaves_the_skip_series_alone():
    metrics = Metrics(MODEL_NAME)
    prefill = StepStats(1, 0, 0.1, 0, 50, 1, 30, generated_depths=[], num_depth_buckets=1)
    metrics.observe_step(prefill)
    assert value(metrics, "layers_computed_total") == 0
    assert value(metrics, "layers_skipped_total") == 0
    assert value(metrics, "token_depth_count") == 0
    assert value(metrics, "depth_buckets_per_step_count") == 1


def test_instances_do_not_share_series():
    first, second = Metrics("a"), Metrics("b")
    first.observe_step(STEPS[0])
    assert first.registry is not second.registry
    assert (
        second.registry.get_sample_value("skipdecode:generation_tokens_total", {"model_name": "b"})
        == 0
    )
    body, _ = second.render()
    assert b'model_name="a"' not in body


def test_a_given_registry_receives_the_series():
    registry = CollectorRegistry()
    metrics = Metrics("m", registry=registry)
    metrics.observe_step(STEPS[0])
    expected = STEPS[0].num_generation_tokens
    assert registry.get_sample_value("skipdecode:generation_tokens_total", {"model_name": "m"}) == (
        expected
    )


def test_render_is_the_text_exposition_format(fed_metrics):
    body, content_type = fed_metrics.render()
    assert content_type.startswith("text/plain")
    series = exported_series(fed_metrics)
    (sample,) = series["skipdecode:num_requests_running"]
    assert sample.labels == LABELS
    assert not any(name.endswith("_created") for name in series)


def test_concurrent_observers_lose_no_updates():
    metrics = Metrics(MODEL_NAME)
    step = StepStats(1, 0, 0.0, 0, 0, 1, 4, generated_depths=[3], num_depth_buckets=1)
    num_threads, num_steps = 4, 500

    def observe() -> None:
        for _ in range(num_steps):
            metrics.observe_step(step)
            metrics.render()

    threads = [threading.Thread(target=observe) for _ in range(num_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = num_threads * num_steps
    assert value(metrics, "generation_tokens_total") == total
    assert value(metrics, "token_depth_count") == total
    assert value(metrics, "layers_skipped_total") == total


def _request(**overrides) -> RequestStats:
    fields = dict(
        finish_reason="stop",
        num_prompt_tokens=5,
        num_generation_tokens=3,
        queue_seconds=0.0,
        time_to_first_token=0.1,
        inter_token_latencies=[0.01, 0.01],
        e2e_seconds=0.2,
        theoretical_speedup=1.0,
        num_layers_computed=3,
        num_layers_skipped=0,
    )
    return RequestStats(**{**fields, **overrides})
