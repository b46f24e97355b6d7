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
    """

    served_model_names: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_queue_len: int | None = None
    shutdown_timeout: float = 10.0
    log_level: str = "info"
    max_request_bytes: int = 4 * 1024 * 1024

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

    @property
    def model_name(self) -> str:
        """The name responses report."""
        return self.served_model_names[0]
