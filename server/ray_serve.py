"""Serve on Ray Serve: N replicas, each one ``AsyncEngine`` behind the unchanged FastAPI app,
with Ray Serve's HTTP proxy as the one endpoint (docs/deploy.md).

Ray Serve does the replica runtime: placement on CPUs/GPUs across nodes, restarts, routing
(power of two choices on each replica's ongoing requests), autoscaling and graceful draining.
Each replica builds the same app a single process serves (``build_app``), so the routes, the
``skip`` extension, SSE, auth and error bodies are the same code.

What Ray does not give is one view of our own metrics: each replica owns a Prometheus registry.
Every replica reports its metric families and stats to one small named actor (the replica hub)
twice a second; ``/metrics`` on any replica serves all of them, each series labelled with its
``replica``, and ``/internal/stats`` lists every replica's occupancy. A killed replica stops
reporting and drops out after ``STALE_AFTER_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shlex
import signal
import threading
import time
from typing import Any

import ray
from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve

from skipdecode.config import EngineConfig
from skipdecode.server.app import build_app
from skipdecode.server.cluster import render_merged
from skipdecode.server.config import RayConfig, ServerConfig
from skipdecode.server.engine_client import EngineClient
from skipdecode.server.metrics import Metrics

logger = logging.getLogger(__name__)

APP_NAME = "skipdecode"
NAMESPACE = "skipdecode"
HUB_NAME = "skipdecode-replica-hub"
REPORT_INTERVAL_S = 0.5
STALE_AFTER_S = 10.0
# A replica gets this long past the drain timeout before Ray kills it.
SHUTDOWN_MARGIN_S = 5.0


class ReplicaHub:
    """Ray actor: the latest metric families and stats each replica reported."""

    def __init__(self) -> None:
        self._reports: dict[str, tuple[float, list, dict]] = {}

    def report(self, replica: str, families: list, stats: dict) -> None:
        self._reports[replica] = (time.monotonic(), families, stats)

    def remove(self, replica: str) -> None:
        self._reports.pop(replica, None)

    def families(self) -> dict[str, list]:
        """Each live replica's metric families."""
        return {replica: fams for replica, (_, fams, _) in self._live().items()}

    def stats(self) -> dict[str, dict]:
        """Each live replica's stats."""
        return {replica: stats for replica, (_, _, stats) in self._live().items()}

    def _live(self) -> dict[str, tuple[float, list, dict]]:
        now = time.monotonic()
        for replica, (at, _, _) in list(self._reports.items()):
            if now - at > STALE_AFTER_S:
                del self._reports[replica]
        return self._reports


def replica_hub() -> Any:
    """The cluster's hub actor, created by the first caller (detached: replicas come and go)."""
    return (
        ray.remote(num_cpus=0)(ReplicaHub)
        .options(name=HUB_NAME, namespace=NAMESPACE, get_if_exists=True, lifetime="detached")
        .remote()
    )


class RayReplicaView:
    """This replica's side of the hub: reports itself, reads everyone (a ``ClusterView``)."""

    def __init__(self, metrics: Metrics, client: EngineClient, replica: str, hub: Any) -> None:
        self._metrics, self._client, self._replica, self._hub = metrics, client, replica, hub
        self._task = asyncio.get_running_loop().create_task(self._report_forever())

    def _own_stats(self) -> dict:
        return {**self._client.stats(), "pid": os.getpid()}

    def _own_families(self) -> list:
        return list(self._metrics.registry.collect())

    async def _report_forever(self) -> None:
        while True:
            try:
                await self._hub.report.remote(
                    self._replica, self._own_families(), self._own_stats()
                )
            except Exception:  # the hub restarting: keep serving, report again later
                logger.warning("replica %s could not report to the hub", self._replica)
            await asyncio.sleep(REPORT_INTERVAL_S)

    async def render_metrics(self) -> tuple[bytes, str]:
        families = await self._hub.families.remote()
        families[self._replica] = self._own_families()  # this replica's own: always fresh
        return render_merged(families), CONTENT_TYPE_LATEST

    async def replica_stats(self) -> dict[str, dict]:
        stats = await self._hub.stats.remote()
        stats[self._replica] = self._own_stats()
        return dict(sorted(stats.items()))

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._hub.remove.remote(self._replica)
        except Exception:
            logger.warning("replica %s could not leave the hub", self._replica)


@serve.ingress()
class SkipdecodeReplica:
    """One Ray Serve replica: one engine and the server's FastAPI app in front of it."""

    def __init__(self, engine_config: EngineConfig, server_config: ServerConfig, threads: int):
        import torch

        torch.set_num_threads(threads)
        self._engine_config, self._server_config = engine_config, server_config
        self._app: FastAPI | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        replica = serve.get_replica_context().replica_id.unique_id
        hub = replica_hub()
        self._app = build_app(
            self._engine_config,
            self._server_config,
            cluster=lambda metrics, client: RayReplicaView(metrics, client, replica, hub),
        )
        return self._app

    def check_health(self) -> None:
        """Ray's health check: a dead engine loop makes Ray replace this replica."""
        client = getattr(getattr(self._app, "state", None), "client", None)
        if client is not None and not client.async_engine.is_running:
            raise RuntimeError("the engine loop is not running")


def deployment_options(ray_config: RayConfig, server_config: ServerConfig) -> dict:
    """Ray Serve options of the replica deployment (resources, scaling, draining)."""
    options: dict = {
        "name": "SkipdecodeReplica",
        "ray_actor_options": {
            "num_cpus": ray_config.num_cpus_per_replica,
            "num_gpus": ray_config.num_gpus_per_replica,
            # The app is async and never blocks its loop (the engine has its own thread), so it
            # runs on the replica's own event loop: one thread hop less per streamed chunk, 17%
            # more tokens/s at 16 streams on a 2-core CPU (docs/deploy.md, "Measured").
            "runtime_env": {"env_vars": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}},
        },
        "max_ongoing_requests": ray_config.max_ongoing_requests,
        "graceful_shutdown_timeout_s": server_config.shutdown_timeout + SHUTDOWN_MARGIN_S,
        "graceful_shutdown_wait_loop_s": 0.5,
        "health_check_period_s": 5.0,
    }
    if ray_config.autoscale is None:
        options["num_replicas"] = ray_config.replicas
    else:
        low, high = ray_config.autoscale
        options["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            "initial_replicas": ray_config.replicas,
            "target_ongoing_requests": ray_config.target_ongoing_requests,
        }
    return options


def build_application(
    engine_config: EngineConfig, server_config: ServerConfig, ray_config: RayConfig
) -> Any:
    """The bound Ray Serve application (what ``serve.run`` and a RayService config import)."""
    deployment = serve.deployment(SkipdecodeReplica).options(
        **deployment_options(ray_config, server_config)
    )
    # A replica is a process of its own already: its engine steps on a thread of it.
    server_config = dataclasses.replace(server_config, engine_process=False)
    return deployment.bind(engine_config, server_config, ray_config.torch_threads)


def app_builder(args: dict) -> Any:
    """Ray Serve application builder (``import_path: skipdecode.server.ray_serve:app_builder``),
    for ``serve run``/``serve deploy`` and KubeRay's RayService (deploy/k8s/rayservice.yaml).

    ``args["flags"]``: ``skipdecode serve`` flags, as one string or a list; the Ray flags among
    them size the deployment. ``--host``/``--port``/``--ray-address`` do not apply here: the
    Serve config's ``http_options`` and the cluster it is deployed to decide those.
    """
    from skipdecode import cli_args
    from skipdecode.cli import build_parser

    flags = args.get("flags", [])
    unknown = set(args) - {"flags"}
    if unknown:
        raise ValueError(f"app_builder args: unknown keys {sorted(unknown)} (only 'flags')")
    if isinstance(flags, str):
        flags = shlex.split(flags)
    parsed = build_parser().parse_args(["serve", *flags])
    if parsed.ray_address is not None:
        raise ValueError("app_builder flags: --ray-address has no meaning inside a Serve config")
    ray_config = cli_args.ray_config(parsed) or RayConfig()
    return build_application(
        cli_args.engine_config(parsed), cli_args.server_config(parsed), ray_config
    )


def run_ray_server(
    engine_config: EngineConfig, server_config: ServerConfig, ray_config: RayConfig
) -> int:
    """Serve on Ray until SIGTERM (or Ctrl-C): replicas drain, then Serve and the hub stop."""
    logging.basicConfig(
        level=server_config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # "local": a fresh Ray for this process, never a cluster some earlier `ray start` left.
    address = ray_config.address or "local"
    ray.init(address=address, namespace=NAMESPACE, log_to_driver=True)
    location = "HeadOnly" if ray_config.address is None else "EveryNode"
    serve.start(
        http_options={"host": server_config.host, "port": server_config.port, "location": location}
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.run(
            build_application(engine_config, server_config, ray_config),
            name=APP_NAME,
            route_prefix="/",
            blocking=False,
        )
        logger.info(
            "serving %s on http://%s:%d with Ray Serve",
            server_config.model_name,
            server_config.host,
            server_config.port,
        )
        stop.wait()
        logger.info("draining the replicas (up to %.0f s)", server_config.shutdown_timeout)
        serve.delete(APP_NAME)  # replicas stop taking requests, finish theirs, then exit
    finally:
        if ray_config.address is None:
            serve.shutdown()  # our own Ray: Serve goes with it
        else:  # a shared cluster: leave Serve (and other applications) running
            with contextlib.suppress(Exception):
                serve.delete(APP_NAME)
        with contextlib.suppress(ValueError):  # no replica ever started
            ray.kill(ray.get_actor(HUB_NAME, namespace=NAMESPACE))
        ray.shutdown()
    return 0
