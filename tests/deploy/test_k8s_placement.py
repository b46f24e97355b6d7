"""The Kubernetes manifests place the server where it belongs: GPU and CPU nodes, the model
volume, the autoscaler on the waiting queue, the Prometheus scrape."""

from __future__ import annotations

import re

import pytest
import yaml
from deploy_helpers import DOCKER, exported_series
from k8s_helpers import (
    ADAPTER_VALUES,
    COMPONENTS,
    WAITING_SERIES,
    env,
    one,
    overlays,
    pod_spec,
    rendered,
    serve_args,
    server,
)


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
