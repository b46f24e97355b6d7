"""Rendering, lookups and validation shared by the Kubernetes manifest tests."""

from __future__ import annotations

import functools
import json
import re

import kubernetes_validate
import pytest
from deploy_helpers import DOCKER, REPO
from k8s_render import build, render

K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30"
OVERLAYS = ("overlays/cpu", "overlays/gpu")
COMPONENTS = ("components/model-pvc", "components/hpa", "components/servicemonitor")
# Each overlay alone, with each component, and with all of them; and the base by itself.
VARIANTS = [
    ("base", ()),
    *((overlay, ()) for overlay in OVERLAYS),
    *((overlay, (component,)) for overlay in OVERLAYS for component in COMPONENTS),
    *((overlay, COMPONENTS) for overlay in OVERLAYS),
]
VARIANT_IDS = ["+".join([d.split("/")[-1], *(c.split("/")[-1] for c in cs)]) for d, cs in VARIANTS]
# Custom resources: not in the Kubernetes schemas, checked field by field below.
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
# Files under deploy/k8s that no kustomization lists, on purpose.
NOT_RENDERED = {
    "base/secret.example.yaml",
    "components/hpa/prometheus-adapter-values.yaml",
    "rayservice.yaml",  # Ray mode, applied on its own (tests/deploy/test_k8s_rayservice.py)
}
SECRET_EXAMPLE = K8S / "base" / "secret.example.yaml"
ADAPTER_VALUES = K8S / "components" / "hpa" / "prometheus-adapter-values.yaml"
WAITING_SERIES = "skipdecode:num_requests_waiting"

variants = pytest.mark.parametrize("directory,components", VARIANTS, ids=VARIANT_IDS)
overlays = pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda o: o.split("/")[-1])


@functools.cache
def _rendered(directory: str, components: tuple[str, ...]) -> str:
    if components:  # as an overlay of your own would list them
        kustomization = {"resources": [directory], "components": list(components)}
        resources = build(kustomization, K8S)
    else:
        resources = render(K8S / directory)
    return json.dumps(resources)


def rendered(directory: str, components: tuple[str, ...] = ()) -> list[dict]:
    """A fresh copy of the rendered resources of one variant."""
    return json.loads(_rendered(directory, components))


def one(resources: list[dict], kind: str) -> dict:
    (resource,) = [r for r in resources if r["kind"] == kind]
    return resource


def pod_spec(resources: list[dict]) -> dict:
    return one(resources, "Deployment")["spec"]["template"]["spec"]


def server(resources: list[dict]) -> dict:
    (container,) = pod_spec(resources)["containers"]
    return container


def env(container: dict) -> dict[str, dict]:
    return {variable["name"]: variable for variable in container.get("env", [])}


def serve_args(container: dict):
    """The container's args as `skipdecode serve` parses them (so an unknown flag fails here)."""
    from skipdecode.cli import build_parser

    return build_parser().parse_args(["serve", *container.get("args", [])])


def entrypoint_port() -> int:
    """The port docker/entrypoint.sh starts `skipdecode serve` on."""
    text = (DOCKER / "entrypoint.sh").read_text()
    match = re.search(r"^exec skipdecode serve --host 0\.0\.0\.0 --port (\d+) ", text, re.M)
    assert match, "docker/entrypoint.sh no longer execs `skipdecode serve --host 0.0.0.0 --port N`"
    return int(match.group(1))


@functools.cache
def _validate(resource_json: str) -> str:
    return kubernetes_validate.validate(
        json.loads(resource_json), desired_version=KUBERNETES_VERSION, strict=True
    )


def validate(resource: dict) -> str:
    """Validate against the strict Kubernetes schemas (raises on an error); the schema version."""
    return _validate(json.dumps(resource, sort_keys=True))


# --- rendering and schemas -------------------------------------------------------------------
