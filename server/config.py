"""The HTTP server's own settings, validated once at the entry point (engine settings live in
``skipdecode.config``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerConfig:
    """Where the server listens, who may call it, and how it queues and drains.

    ``served_model_names``: the names clients may pass as ``model``; the first one is reported.
    ``max_queue_len``: requests waiting for the engine before new ones get 503 (None: no limit).
    ``shutdown_timeout``: seconds in-flight requests get to finish after SIGTERM.
    ``max_request_bytes``: larger request bodies get 413 before they are parsed.
    ``engine_process``: run the engine in a process of its own (server/core_client.py), as
    ``skipdecode serve`` does by default; False keeps it on a thread of this process.
    ``engine_threads``: torch threads of the engine process (None: the CPUs this process may use).
    """

    served_model_names: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_queue_len: int | None = None
    shutdown_timeout: float = 10.0
    log_level: str = "info"
    max_request_bytes: int = 4 * 1024 * 1024
    engine_process: bool = False
    engine_threads: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "served_model_names", tuple(self.served_model_names))
        if not self.served_model_names or not all(self.served_model_names):
            raise ValueError("ServerConfig.served_model_names must be non-empty names")
        if not (isinstance(self.port, int) and 0 <= self.port <= 65535):
            raise ValueError(f"ServerConfig.port must be in [0, 65535] (got {self.port!r})")
        if self.api_key is not None and not self.api_key:
            raise ValueError("ServerConfig.api_key must not be empty (use None for no key)")
        if self.max_queue_len is not None and self.max_queue_len < 1:
            raise ValueError(f"ServerConfig.max_queue_len must be >= 1 (got {self.max_queue_len})")
        if not (isinstance(self.max_request_bytes, int) and self.max_request_bytes >= 1):
            raise ValueError("ServerConfig.max_request_bytes must be an integer >= 1")
        if not self.shutdown_timeout >= 0:
            raise ValueError("ServerConfig.shutdown_timeout must be >= 0")
        if self.engine_threads is not None and not (
            isinstance(self.engine_threads, int) and self.engine_threads >= 1
        ):
            raise ValueError("ServerConfig.engine_threads must be an integer >= 1")

    @property
    def model_name(self) -> str:
        """The name responses report."""
        return self.served_model_names[0]


@dataclass(frozen=True)
class RayConfig:
    """How ``skipdecode serve`` runs on Ray Serve (``server/ray_serve.py``); docs/deploy.md.

    ``replicas``: engine replicas at start (with ``autoscale``: the initial count).
    ``address``: an existing Ray cluster to join (``auto``, ``HOST:6379``, ``ray://...``); None
    starts a local one for this process.
    ``num_cpus_per_replica`` / ``num_gpus_per_replica``: Ray resources each replica reserves.
    ``threads_per_replica``: torch threads of a replica's engine (None: its whole CPUs, >= 1).
    ``autoscale``: (min, max) replicas, scaled on ongoing requests toward
    ``target_ongoing_requests`` per replica; None keeps ``replicas`` fixed.
    ``max_ongoing_requests``: requests Ray routes to one replica at once; more wait in the proxy.
    """

    replicas: int = 1
    address: str | None = None
    num_cpus_per_replica: float = 1.0
    num_gpus_per_replica: float = 0.0
    threads_per_replica: int | None = None
    autoscale: tuple[int, int] | None = None
    target_ongoing_requests: float = 32.0
    max_ongoing_requests: int = 128

    def __post_init__(self) -> None:
        if not (isinstance(self.replicas, int) and self.replicas >= 1):
            raise ValueError(f"RayConfig.replicas must be an integer >= 1 (got {self.replicas!r})")
        if self.address is not None and not self.address:
            raise ValueError("RayConfig.address must not be empty (use None for a local Ray)")
        if not self.num_cpus_per_replica >= 0:
            raise ValueError("RayConfig.num_cpus_per_replica must be >= 0")
        if not self.num_gpus_per_replica >= 0:
            raise ValueError("RayConfig.num_gpus_per_replica must be >= 0")
        if self.threads_per_replica is not None and self.threads_per_replica < 1:
            raise ValueError("RayConfig.threads_per_replica must be >= 1")
        if self.autoscale is not None:
            low, high = self.autoscale
            if not (1 <= low <= high):
                raise ValueError(
                    "RayConfig.autoscale must be MIN:MAX with 1 <= MIN <= MAX"
                    f" (got {self.autoscale})"
                )
            if not low <= self.replicas <= high:
                raise ValueError("RayConfig.replicas must lie within RayConfig.autoscale")
        if not self.target_ongoing_requests > 0:
            raise ValueError("RayConfig.target_ongoing_requests must be > 0")
        if not (isinstance(self.max_ongoing_requests, int) and self.max_ongoing_requests >= 1):
            raise ValueError("RayConfig.max_ongoing_requests must be an integer >= 1")

    @property
    def torch_threads(self) -> int:
        """The replica engine's torch threads."""
        if self.threads_per_replica is not None:
            return self.threads_per_replica
        return max(1, int(self.num_cpus_per_replica))
