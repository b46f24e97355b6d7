"""``skipdecode serve`` flags that put the server on Ray Serve, and their RayConfig."""

from __future__ import annotations

import argparse

from skipdecode.server.config import RayConfig


def add_ray_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "replicas on Ray Serve (any of these serves through Ray; docs/deploy.md)"
    )
    group.add_argument("--replicas", type=int, default=None, help="engine replicas (default 1)")
    group.add_argument(
        "--ray-address",
        default=None,
        help="join this Ray cluster (auto | HOST:6379) instead of starting a local one",
    )
    group.add_argument("--num-cpus-per-replica", type=float, default=None, help="default 1")
    group.add_argument("--num-gpus-per-replica", type=float, default=None, help="default 0")
    group.add_argument(
        "--threads-per-replica", type=int, default=None, help="torch threads (default: its CPUs)"
    )
    group.add_argument(
        "--autoscale",
        default=None,
        metavar="MIN:MAX",
        help="scale replicas between MIN and MAX on ongoing requests",
    )
    group.add_argument(
        "--target-ongoing-requests",
        type=float,
        default=None,
        help="autoscaling target per replica (default 32)",
    )
    group.add_argument(
        "--max-ongoing-requests",
        type=int,
        default=None,
        help="requests routed to one replica at once; more wait in the proxy (default 128)",
    )


def ray_config(args: argparse.Namespace) -> RayConfig | None:
    """The Ray settings, or None when no Ray flag was given (a single process serves)."""
    flags = {
        "replicas": args.replicas,
        "address": args.ray_address,
        "num_cpus_per_replica": args.num_cpus_per_replica,
        "num_gpus_per_replica": args.num_gpus_per_replica,
        "threads_per_replica": args.threads_per_replica,
        "autoscale": _min_max(args.autoscale),
        "target_ongoing_requests": args.target_ongoing_requests,
        "max_ongoing_requests": args.max_ongoing_requests,
    }
    given = {name: value for name, value in flags.items() if value is not None}
    if not given:
        return None
    if "replicas" not in given and "autoscale" in given:
        given["replicas"] = given["autoscale"][0]
    return RayConfig(**given)


def _min_max(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        low, high = (int(part) for part in text.split(":"))
    except ValueError:
        raise ValueError(f"--autoscale must be MIN:MAX, two integers (got {text!r})") from None
    return low, high
