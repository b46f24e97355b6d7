"""The Kubernetes manifests (deploy/k8s) render, validate against the Kubernetes 1.30 schemas, and
fit the server: probes, drain, API key, Service, GPU/CPU placement, model volume, HPA, scraping.

Rendering uses the suite's small renderer (k8s_render.py); when a real kustomize (`kustomize` or
`kubectl kustomize`) is installed, one test renders every variant with it too and compares.
"""

from __future__ import annotations

import functools
import json
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
from deploy_helpers import DOCKER, REPO, exported_series
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
NOT_RENDERED = {"base/secret.example.yaml", "components/hpa/prometheus-adapter-values.yaml"}
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


def gpu_traits(resources: list[dict]) -> dict:
    pod, container = pod_spec(resources), server(resources)
    return {
        "limit": container["resources"].get("limits", {}).get("nvidia.com/gpu"),
        "request": container["resources"].get("requests", {}).get("nvidia.com/gpu"),
        "tolerations": [t for t in pod.get("tolerations", []) if t["key"] == "nvidia.com/gpu"],
        "nodeSelector": pod.get("nodeSelector", {}),
        "device": serve_args(container).device,
        "image": container["image"],
    }


@pytest.mark.parametrize("components", [(), COMPONENTS], ids=["alone", "all-components"])
def test_gpu_overlay_asks_for_a_gpu_node(components):
    traits = gpu_traits(rendered("overlays/gpu", components))
    assert traits["limit"] == 1
    assert traits["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert traits["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert traits["device"] == "cuda"
    assert traits["image"] == "skipdecode:cuda"  # docker/compose.gpu.yaml's tag
    startup = server(rendered("overlays/gpu", components))["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # Dockerfile.cuda


@pytest.mark.parametrize(
    "directory,components",
    [("base", ()), ("overlays/cpu", ()), ("overlays/cpu", COMPONENTS)],
    ids=["base", "cpu", "cpu+all-components"],
)
def test_cpu_variants_ask_for_no_gpu(directory, components):
    traits = gpu_traits(rendered(directory, components))
    assert traits["limit"] is None and traits["request"] is None
    assert traits["tolerations"] == [] and traits["nodeSelector"] == {}
    assert traits["device"] in ("cpu", "auto")
    assert traits["image"] == "skipdecode:cpu"


def test_cpu_overlay_is_guaranteed_and_bounded():
    container = server(rendered("overlays/cpu"))
    assert container["resources"]["requests"] == container["resources"]["limits"]
    args = serve_args(container)
    assert args.device == "cpu"
    assert args.max_num_seqs < 64  # fewer than the default on a CPU share
    assert args.max_queue_len is not None


# --- components -------------------------------------------------------------------------------


@overlays
def test_model_pvc_component_serves_the_model_from_the_claim(overlay):
    without = rendered(overlay)
    assert "SKIPDECODE_MODEL" not in env(server(without))  # the image's default model
    assert all(m["mountPath"] != "/models" for m in server(without)["volumeMounts"])

    resources = rendered(overlay, ("components/model-pvc",))
    claim = one(resources, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in pod_spec(resources)["volumes"]}
    (mount,) = [m for m in server(resources)["volumeMounts"] if m["mountPath"] == "/models"]
    assert mount["readOnly"] is True
    source = volumes[mount["name"]]["persistentVolumeClaim"]
    assert source["claimName"] == claim["metadata"]["name"]
    model = env(server(resources))["SKIPDECODE_MODEL"]["value"]
    assert model.startswith("/models/")
    # The entry point passes SKIPDECODE_MODEL on as --model.
    assert 'set -- --model "$SKIPDECODE_MODEL" "$@"' in (DOCKER / "entrypoint.sh").read_text()
    assert "--model" not in server(resources)["args"]
    # The overlay's own settings survive the component's patch.
    assert server(resources)["args"] == server(without)["args"]
    assert env(server(without)).items() <= env(server(resources)).items()


def adapter_rule() -> dict:
    (rule,) = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    return rule


def adapter_metric_name(rule: dict, series: str) -> str:
    """The custom-metrics name prometheus-adapter gives `series` (Go's ${1} is Python's \\1)."""
    replacement = re.sub(r"\$\{(\d+)\}", r"\\\1", rule["name"]["as"])
    assert re.fullmatch(rule["name"]["matches"], series)
    return re.sub(rule["name"]["matches"], replacement, series)


@overlays
def test_hpa_scales_the_deployment_on_the_waiting_queue(overlay, fed_metrics):
    resources = rendered(overlay, ("components/hpa",))
    hpa, deployment = one(resources, "HorizontalPodAutoscaler"), one(resources, "Deployment")
    target = hpa["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "skipdecode"}
    assert target["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"]  # else every apply resets the HPA's count
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    # The adapter rule selects the server's series and renames it to the HPA's metric name.
    rule = adapter_rule()
    series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"]).group(0)
    assert series == WAITING_SERIES
    assert series in exported_series(fed_metrics)
    assert metric["pods"]["metric"]["name"] == adapter_metric_name(rule, series)
    assert metric["pods"]["metric"]["name"] == "skipdecode_num_requests_waiting"
    # Per pod: the labels the ServiceMonitor scrape adds map to the namespace and the pod.
    overrides = rule["resources"]["overrides"]
    assert overrides == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert 'namespace!=""' in rule["seriesQuery"] and 'pod!=""' in rule["seriesQuery"]
    assert "<<.Series>>{<<.LabelMatchers>>}" in rule["metricsQuery"]
    assert "by (<<.GroupBy>>)" in rule["metricsQuery"]


@overlays
def test_servicemonitor_scrapes_the_services_metrics_port(overlay):
    resources = rendered(overlay, ("components/servicemonitor",))
    monitor, service = one(resources, "ServiceMonitor"), one(resources, "Service")
    # Not in the Kubernetes schemas: the fields of monitoring.coreos.com/v1 that are used.
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    assert set(monitor["spec"]["selector"]) == {"matchLabels"}
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
    assert endpoint["port"] == "http"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert re.fullmatch(r"\d+s", endpoint["interval"])
