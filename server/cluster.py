"""One view of several engine replicas: their metrics merged with a ``replica`` label, their
stats side by side. The replica runtime (Ray Serve, ``server/ray_serve.py``) supplies a
:class:`ClusterView`; a single-process server has none and reports only itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric

REPLICA_LABEL = "replica"


class ClusterView(Protocol):
    """What the app asks of the replica runtime; every replica's app holds one."""

    async def render_metrics(self) -> tuple[bytes, str]:
        """Prometheus text of every live replica, each series labelled with its replica."""
        ...

    async def replica_stats(self) -> dict[str, dict]:
        """Each live replica's ``EngineClient.stats()`` (and its process id), by replica id."""
        ...

    async def close(self) -> None:
        """Stop reporting this replica (its series leave the merged view)."""
        ...


class _Families:
    """A collector over already-collected metric families (what ``generate_latest`` reads)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def merge_families(per_replica: Mapping[str, Sequence[Metric]]) -> list[Metric]:
    """One family per metric name, holding every replica's samples with a ``replica`` label.

    Families keep the first replica's help text, type and unit; replicas run the same code, so
    they agree. Replicas are ordered by id, so the output is stable between scrapes.
    """
    merged: dict[str, Metric] = {}
    for replica in sorted(per_replica):
        for family in per_replica[replica]:
            out = merged.get(family.name)
            if out is None:
                out = Metric(family.name, family.documentation, family.type, family.unit)
                merged[family.name] = out
            for sample in family.samples:
                labels = {**sample.labels, REPLICA_LABEL: replica}
                out.samples.append(sample._replace(labels=labels))
    return list(merged.values())


def render_merged(per_replica: Mapping[str, Sequence[Metric]]) -> bytes:
    """Prometheus text exposition of :func:`merge_families`."""
    return generate_latest(_Families(merge_families(per_replica)))  # type: ignore[arg-type]
