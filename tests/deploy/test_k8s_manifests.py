"""The Kubernetes manifests (deploy/k8s) render, validate against the Kubernetes 1.30 schemas, and
fit the server: probes, drain, API key, Service, GPU/CPU placement, model volume, HPA, scraping.

Rendering uses the suite's small renderer (k8s_render.py); when a real kustomize (`kustomize` or
`kubectl kustomize`) is installed, one test renders every variant with it too and compares.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from deploy_helpers import DOCKER, REPO
from k8s_helpers import (
    CRDS,
    K8S,
    KUBERNETES_VERSION,
    NOT_RENDERED,
    SECRET_EXAMPLE,
    entrypoint_port,
    env,
    one,
    pod_spec,
    rendered,
    serve_args,
    server,
    validate,
    variants,
)


@variants
def test_every_resource_is_valid_for_kubernetes_1_30(directory, components):
    resources = rendered(directory, components)
    checked = 0
    for resource in resources:
        if (resource["apiVersion"], resource["kind"]) in CRDS:
            continue
        try:
            assert validate(resource) == KUBERNETES_VERSION
        except kubernetes_validate.ValidationError as error:
            where = f"{resource['kind']}/{resource['metadata']['name']} at {error.json_path}"
            pytest.fail(f"{where}: {error.message}", pytrace=False)
        checked += 1
    assert checked >= 2  # at least the Deployment and the Service


@variants
def test_rendered_resources_are_the_expected_set(directory, components):
    kinds = sorted(r["kind"] for r in rendered(directory, components))
    expected = ["Deployment", "Service"]
    expected += ["PersistentVolumeClaim"] * ("components/model-pvc" in components)
    expected += ["HorizontalPodAutoscaler"] * ("components/hpa" in components)
    expected += ["ServiceMonitor"] * ("components/servicemonitor" in components)
    assert kinds == sorted(expected)
    assert "Secret" not in kinds  # `kubectl apply -k` must never overwrite the real key


def test_every_file_is_rendered_or_deliberately_left_out():
    listed = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        names = [*spec.get("resources", []), *(p["path"] for p in spec.get("patches", []))]
        listed |= {(kustomization.parent / name).resolve() for name in names}
        listed.add(kustomization.resolve())
    files = {p.resolve() for p in K8S.rglob("*") if p.is_file()}
    left_out = {str(p.relative_to(K8S.resolve())) for p in files - listed}
    assert left_out == NOT_RENDERED


@variants
def test_a_real_kustomize_renders_the_same(directory, components, tmp_path):
    if shutil.which("kustomize"):
        command = [shutil.which("kustomize"), "build"]
    elif shutil.which("kubectl"):
        command = [shutil.which("kubectl"), "kustomize"]
    else:
        reason = "neither `kustomize` nor `kubectl` is installed: not compared with real kustomize"
        warnings.warn(reason, stacklevel=1)
        print(f"SKIP: {reason}", file=sys.stderr)
        pytest.skip(reason)
    if components:  # kustomize wants paths relative to the kustomization
        relative = [os.path.relpath(K8S / path, tmp_path) for path in (directory, *components)]
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": relative[:1],
            "components": relative[1:],
        }
        (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        target = tmp_path
    else:
        target = K8S / directory
    result = subprocess.run([*command, str(target)], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    real = [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    def by_identity(resources):
        return {(r["kind"], r["metadata"]["name"]): r for r in resources}

    assert by_identity(real) == by_identity(rendered(directory, components))


# --- the server container -------------------------------------------------------------------


def test_the_image_entry_point_starts_the_server():
    container = server(rendered("base"))
    # No `command`: the image's entry point runs `exec skipdecode serve ...` with `args` appended,
    # so the server is PID 1 and receives SIGTERM itself.
    assert "command" not in container
    assert container["image"] == "skipdecode:cpu"  # the tag docker/compose.yaml builds
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": entrypoint_port(), "protocol": "TCP"}


@variants
def test_probes_hit_health_on_the_server_port(directory, components):
    container = server(rendered(directory, components))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probes = {kind: container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    for probe in probes.values():
        get = probe["httpGet"]
        assert get["path"] == "/health"
        assert ports.get(get["port"], get["port"]) == entrypoint_port()
        assert probe["timeoutSeconds"] < probe["periodSeconds"]

    def patience(probe: dict) -> int:
        return probe["periodSeconds"] * probe["failureThreshold"]

    # The first start builds the CPU kernels (30-90 s) and loads the model: minutes allowed.
    assert patience(probes["startupProbe"]) >= 180
    assert probes["readinessProbe"]["periodSeconds"] <= 10
    # A restart kills every request in flight: only after a sustained failure.
    assert patience(probes["livenessProbe"]) >= 60
    assert probes["livenessProbe"]["failureThreshold"] >= 3


@variants
def test_grace_period_outlasts_the_servers_drain(directory, components):
    from skipdecode.server.launcher import SHUTDOWN_MARGIN_S

    resources = rendered(directory, components)
    args = serve_args(server(resources))
    assert "--shutdown-timeout" in server(resources)["args"]  # stated, not left to the default
    grace = pod_spec(resources)["terminationGracePeriodSeconds"]
    # The drain lasts --shutdown-timeout, then uvicorn waits up to SHUTDOWN_MARGIN_S more.
    assert grace > args.shutdown_timeout + SHUTDOWN_MARGIN_S
    assert "lifecycle" not in server(resources)  # SIGTERM drains; see the comment in the file


@variants
def test_api_key_comes_from_the_example_secret(directory, components):
    secret = yaml.safe_load(SECRET_EXAMPLE.read_text())
    assert validate(secret) == KUBERNETES_VERSION
    reference = env(server(rendered(directory, components)))["SKIPDECODE_API_KEY"]
    key_ref = reference["valueFrom"]["secretKeyRef"]
    assert key_ref["name"] == secret["metadata"]["name"]
    assert set(secret["stringData"]) == {key_ref["key"]}
    assert not key_ref.get("optional", False)  # no Secret, no start: never served without a key
    assert "kubectl create secret generic skipdecode-api-key" in SECRET_EXAMPLE.read_text()
    assert "--api-key" not in server(rendered(directory, components))["args"]


@variants
def test_service_selects_the_pods_on_the_http_port(directory, components):
    resources = rendered(directory, components)
    deployment, service = one(resources, "Deployment"), one(resources, "Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["type"] == "ClusterIP"
    (port,) = service["spec"]["ports"]
    assert port["name"] == "http" and port["port"] == 8000
    container_ports = {p["name"]: p["containerPort"] for p in server(resources)["ports"]}
    assert container_ports[port["targetPort"]] == entrypoint_port()


def dockerfile_uid(dockerfile: Path) -> int:
    (user,) = re.findall(r"^USER (\S+)", dockerfile.read_text(), re.M)
    return int(user.split(":")[0])


@variants
def test_runs_as_the_images_user_with_a_read_only_root(directory, components):
    resources = rendered(directory, components)
    pod, container = pod_spec(resources), server(resources)
    uid = dockerfile_uid(DOCKER / "Dockerfile.cpu")
    assert uid == dockerfile_uid(DOCKER / "Dockerfile.cuda") != 0
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # Everything the server writes must land on a writable volume.
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    writable = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty_dirs]
    assert "/tmp" in writable  # tempfile and g++
    variables = env(container)
    cache_variables = ["SKIPDECODE_CACHE", "TORCH_EXTENSIONS_DIR", "XDG_CACHE_HOME"]
    if "CUDA_CACHE_PATH" in variables:
        cache_variables.append("CUDA_CACHE_PATH")
    for name in cache_variables:
        path = variables[name]["value"]
        assert any(path == m or path.startswith(m + "/") for m in writable), (name, path)


def test_cache_variables_are_the_ones_the_code_reads():
    """Without importing torch: the names in the source that writes each cache."""
    weights = (REPO / "model_runner" / "weights.py").read_text()
    assert 'CACHE_ENV_VAR = "SKIPDECODE_CACHE"' in weights
    kernels = (REPO / "model_runner" / "cpu_kernels.py").read_text()
    # torch.utils.cpp_extension.load builds into $TORCH_EXTENSIONS_DIR.
    assert "from torch.utils.cpp_extension import load" in kernels


@variants
def test_cpu_threads_follow_the_cpu_limit(directory, components):
    container = server(rendered(directory, components))
    threads = env(container)["OMP_NUM_THREADS"]["valueFrom"]["resourceFieldRef"]
    assert threads["resource"] == "limits.cpu"
    assert "cpu" in container["resources"]["limits"]
    assert "cpu" in container["resources"]["requests"]


# --- overlays ---------------------------------------------------------------------------------
