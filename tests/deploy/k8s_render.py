"""A minimal `kustomize build` for deploy/k8s, so that the tests can check the rendered manifests.

The real tool is `kubectl apply -k DIR` / `kustomize build DIR`. This renders only what the files
under deploy/k8s use, and refuses anything else (so a new feature there fails loudly here instead
of being ignored):

- `resources`: YAML files, or directories holding another kustomization;
- `components`: directories holding a `kind: Component` kustomization, applied in order to what
  the resources produced (their own resources are added, then their patches and images run);
- `patches` given by `path`: strategic-merge patches, aimed at the resource with the patch's
  kind and name. Maps merge key by key; the lists in MERGE_KEYS merge item by item on their key,
  the patch's items first (in its order), then the base items it does not name, as Kubernetes'
  strategic merge orders them; every other list is replaced whole (as `args` and `tolerations`);
- `images`: `newName` / `newTag` for containers whose image (less its tag) equals `name`.

When `kubectl` is installed the tests also render with `kubectl kustomize` and compare.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "components", "patches", "images"}
# Strategic-merge keys of the lists the patches touch (from the Kubernetes API types).
MERGE_KEYS = {"containers": "name", "env": "name", "volumes": "name", "volumeMounts": "mountPath"}


def render(directory: Path) -> list[dict]:
    """The resources `kustomize build directory` would print (in accumulation order)."""
    return build(load_kustomization(directory, "Kustomization"), directory)


def load_kustomization(directory: Path, kind: str) -> dict:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    if kustomization.get("kind") != kind:
        raise ValueError(f"{directory}: expected kind {kind}, got {kustomization.get('kind')}")
    unsupported = set(kustomization) - KUSTOMIZATION_KEYS
    if unsupported:
        raise ValueError(f"{directory}: the test renderer does not implement {sorted(unsupported)}")
    return kustomization


def build(
    kustomization: dict, directory: Path, accumulated: list[dict] | None = None
) -> list[dict]:
    """Apply one kustomization (rooted at directory) on top of `accumulated` resources."""
    resources = list(accumulated or [])
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            resources += render(path)
        else:
            resources += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for entry in kustomization.get("components", []):
        component = directory / entry
        resources = build(load_kustomization(component, "Component"), component, resources)
    for patch in kustomization.get("patches", []):
        if set(patch) != {"path"}:
            raise ValueError(f"{directory}: only `patches: - path: FILE` is implemented")
        body = yaml.safe_load((directory / patch["path"]).read_text())
        (index,) = [i for i, r in enumerate(resources) if identity(r) == identity(body)]
        resources[index] = strategic_merge(resources[index], body)
    for image in kustomization.get("images", []):
        set_image(resources, image)
    identities = [identity(r) for r in resources]
    duplicates = {i for i in identities if identities.count(i) > 1}
    if duplicates:
        raise ValueError(f"{directory}: resources defined twice: {sorted(duplicates)}")
    return resources


def identity(resource: dict) -> tuple[str, str]:
    return resource["kind"], resource["metadata"]["name"]


def strategic_merge(base: Any, patch: Any, field: str | None = None) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        if any(key.startswith("$") for key in patch) or None in patch.values():
            raise ValueError("patch directives ($patch, null deletes) are not implemented")
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value, key) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        by_key = {item[key]: item for item in base}
        named = {item[key] for item in patch}
        merged = [strategic_merge(by_key[i[key]], i) if i[key] in by_key else i for i in patch]
        return merged + [item for item in base if item[key] not in named]
    return patch


def set_image(resources: list[dict], image: dict) -> None:
    if set(image) - {"name", "newName", "newTag"}:
        raise ValueError(f"images: only name, newName and newTag are implemented: {image}")
    for resource in resources:
        pod = resource.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []):
            name, tag = split_image(container["image"])
            if name == image["name"]:
                name = image.get("newName", name)
                tag = image.get("newTag", tag)
                container["image"] = f"{name}:{tag}" if tag else name


def split_image(image: str) -> tuple[str, str | None]:
    """("registry:5000/name", "tag") from "registry:5000/name:tag"; digests are not handled."""
    if "@" in image:
        raise ValueError(f"image digests are not implemented: {image}")
    name, colon, tag = image.rpartition(":")
    if not colon or "/" in tag:  # no tag (the colon, if any, was a registry port)
        return image, None
    return name, tag
