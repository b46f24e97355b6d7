"""Prometheus metrics for the server: vLLM's serving metrics plus SkipDecode's own.

Names follow vLLM (``vllm:num_requests_running`` becomes ``skipdecode:num_requests_running``) and
every series carries a ``model_name`` label. The engine thread feeds ``observe_step`` after each
step and ``observe_request`` when a request finishes or is aborted; ``render`` runs on the HTTP
side. prometheus_client's metric objects lock internally, so the two threads need no lock here.
"""

from __future__ import annotations

import math

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from skipdecode.stats import RequestStats, StepStats

PREFIX = "skipdecode:"
FINISH_REASONS = ("stop", "length", "abort")  # pre-created so rate() sees a zero before the first

# Seconds, from a fast GPU step (~1 ms) up to a long CPU generation (minutes).
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0,
)  # fmt: skip
INTER_TOKEN_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
E2E_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0,
)  # fmt: skip
# Layer counts: every depth of a small model (SmolLM2-135M has 30 layers), coarser up to 128.
DEPTH_BUCKETS = tuple(range(1, 33)) + tuple(range(36, 65, 4)) + tuple(range(72, 129, 8))
SPEEDUP_BUCKETS = (
    1.0, 1.1, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0,
)  # fmt: skip


class Metrics:
    """The server's Prometheus series for one served model.

    Owns its registry: a fresh one per instance unless one is given, so that several apps (as in
    tests) never collide. ``observe_*`` are called on the engine thread; ``render`` on any thread.
    """

    def __init__(self, model_name: str, registry: CollectorRegistry | None = None) -> None:
        # As vLLM does: no `_created` series beside each counter and histogram. They double the
        # series count and no dashboard reads them. (The switch is process-wide.)
        prometheus_client.disable_created_metrics()
        if registry is None:
            registry = CollectorRegistry()
            prometheus_client.ProcessCollector(registry=registry)
            prometheus_client.PlatformCollector(registry=registry)
        self.registry = registry
        self.model_name = model_name
        self._build_scheduler_series()
        self._build_token_series()
        self._build_latency_series()
        self._build_skip_series()

    def _labels(self, metric: Counter | Gauge | Histogram):  # -> the metric's model_name child
        return metric.labels(model_name=self.model_name)

    def _counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(PREFIX + name, doc, ("model_name", *labels), registry=self.registry)

    def _histogram(self, name: str, doc: str, buckets: tuple[float, ...]):
        metric = Histogram(
            PREFIX + name, doc, ("model_name",), buckets=buckets, registry=self.registry
        )
        return self._labels(metric)

    def _build_scheduler_series(self) -> None:
        def gauge(name: str, doc: str):
            return self._labels(Gauge(PREFIX + name, doc, ("model_name",), registry=self.registry))

        self.num_requests_running = gauge(
            "num_requests_running", "Requests in the running batch after the last step."
        )
        self.num_requests_waiting = gauge(
            "num_requests_waiting", "Requests waiting to be scheduled after the last step."
        )
        self.kv_cache_usage = gauge(
            "kv_cache_usage_perc", "Fraction of KV cache blocks in use (0..1; 1 means full)."
        )
        self.num_preemptions = self._labels(
            self._counter("num_preemptions", "Running requests preempted (recomputed later).")
        )

    def _build_token_series(self) -> None:
        self.prompt_tokens = self._labels(
            self._counter("prompt_tokens", "Prompt tokens computed, recomputed ones included.")
        )
        self.generation_tokens = self._labels(
            self._counter("generation_tokens", "Tokens generated (sampled).")
        )
        success = self._counter(
            "request_success", "Requests finished, by finish reason.", ("finished_reason",)
        )
        self._request_success = success
        for reason in FINISH_REASONS:
            success.labels(model_name=self.model_name, finished_reason=reason)

    def _build_latency_series(self) -> None:
        self.time_to_first_token = self._histogram(
            "time_to_first_token_seconds",
            "Request arrival to its first generated token.",
            LATENCY_BUCKETS,
        )
        self.inter_token_latency = self._histogram(
            "inter_token_latency_seconds",
            "Time between two consecutive generated tokens of a request.",
            INTER_TOKEN_BUCKETS,
        )
        self.e2e_request_latency = self._histogram(
            "e2e_request_latency_seconds",
            "Request arrival to its finish (or abort).",
            E2E_BUCKETS,
        )
        self.request_queue_time = self._histogram(
            "request_queue_time_seconds",
            "Request arrival to its first scheduling.",
            LATENCY_BUCKETS,
        )

    def _build_skip_series(self) -> None:
        self.layers_computed = self._labels(
            self._counter(
                "layers_computed", "Decoder layers run by generated tokens (token-layer pairs)."
            )
        )
        self.layers_skipped = self._labels(
            self._counter(
                "layers_skipped", "Decoder layers bypassed by generated tokens (token-layer pairs)."
            )
        )
        self.token_depth = self._histogram(
            "token_depth",
            "Depth (decoder layers run, warm-up included) of each generated token computed.",
            DEPTH_BUCKETS,
        )
        self.depth_buckets_per_step = self._histogram(
            "depth_buckets_per_step",
            "Distinct token depths (exit points) in one engine step.",
            DEPTH_BUCKETS,
        )
        self.theoretical_speedup = self._histogram(
            "theoretical_speedup",
            "Per finished request: L * N / sum of its generated tokens' depths.",
            SPEEDUP_BUCKETS,
        )

    def observe_step(self, stats: StepStats) -> None:
        """Record one engine step (engine thread, once per step)."""
        self.num_requests_running.set(stats.num_running)
        self.num_requests_waiting.set(stats.num_waiting)
        self.kv_cache_usage.set(stats.kv_cache_usage)
        self.num_preemptions.inc(stats.num_preemptions)
        self.prompt_tokens.inc(stats.num_prompt_tokens)
        self.generation_tokens.inc(stats.num_generation_tokens)
        # Counted per step, so tokens recomputed after a preemption count again: this is work done.
        self.layers_computed.inc(stats.num_layers_computed)
        self.layers_skipped.inc(stats.num_layers_skipped)
        for depth in stats.generated_depths:
            self.token_depth.observe(depth)
        if stats.num_depth_buckets > 0:
            self.depth_buckets_per_step.observe(stats.num_depth_buckets)

    def observe_request(self, stats: RequestStats) -> None:
        """Record one finished or aborted request (engine thread)."""
        self._request_success.labels(
            model_name=self.model_name, finished_reason=stats.finish_reason
        ).inc()
        self.e2e_request_latency.observe(stats.e2e_seconds)
        if stats.queue_seconds is not None:
            self.request_queue_time.observe(stats.queue_seconds)
        if stats.time_to_first_token is not None:
            self.time_to_first_token.observe(stats.time_to_first_token)
        for latency in stats.inter_token_latencies:
            self.inter_token_latency.observe(latency)
        # A request that generated nothing has no speedup to speak of (the schedule says 1.0).
        if stats.num_generation_tokens > 0 and math.isfinite(stats.theoretical_speedup):
            self.theoretical_speedup.observe(stats.theoretical_speedup)

    def watch_engine_process(self, pid: int) -> None:
        """Export the engine-core process's CPU, memory and file descriptors as ``engine_process_*``
        (the ``process_*`` series describe the API server process)."""
        prometheus_client.ProcessCollector(
            namespace="engine", pid=lambda: pid, registry=self.registry
        )

    def render(self) -> tuple[bytes, str]:
        """The exposition for ``GET /metrics``: (body, content type), Prometheus text format."""
        return prometheus_client.generate_latest(
            self.registry
        ), prometheus_client.CONTENT_TYPE_LATEST
