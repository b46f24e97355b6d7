"""deploy/k8s/rayservice.yaml (KubeRay): its pods are valid Kubernetes, its Serve config builds
our application with the flags it names, and its versions, key and GPUs agree with the rest."""

from __future__ import annotations

import importlib

import ray
import tomllib
import yaml
from deploy_helpers import REPO
from k8s_helpers import K8S, SECRET_EXAMPLE, validate

RAYSERVICE = K8S / "rayservice.yaml"


def rayservice() -> dict:
    return yaml.safe_load(RAYSERVICE.read_text())


def serve_config() -> dict:
    return yaml.safe_load(rayservice()["spec"]["serveConfigV2"])


def groups() -> list[dict]:
    cluster = rayservice()["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]


def container(group: dict) -> dict:
    (only,) = group["template"]["spec"]["containers"]
    return only


def test_kind_and_every_pod_template_is_valid_kubernetes():
    service = rayservice()
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    for group in groups():  # KubeRay turns each template into pods as written
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}
        validate({**pod, "spec": group["template"]["spec"]})


def test_serve_config_builds_our_application():
    (app,) = serve_config()["applications"]
    module, name = app["import_path"].split(":")
    builder = getattr(importlib.import_module(module), name)
    application = builder(app["args"])
    deployment = application._bound_deployment
    options = deployment.ray_actor_options
    assert options["num_gpus"] == 1
    assert deployment._deployment_config.autoscaling_config.min_replicas == 1
    assert deployment._deployment_config.autoscaling_config.max_replicas == 8
    engine_config = application._bound_deployment.init_args[0]
    assert engine_config.model.device == "cuda"
    assert (
        serve_config()["http_options"]["port"]
        == container(groups()[0])["ports"][-1]["containerPort"]
    )


def test_ray_version_matches_the_pin_and_the_installed_ray():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (pin,) = extras["optional-dependencies"]["ray"]
    version = rayservice()["spec"]["rayClusterConfig"]["rayVersion"]
    assert pin == f"ray[serve]=={version}" and ray.__version__ == version


def test_gpu_workers_and_a_head_without_replicas():
    head, *workers = groups()
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert "nvidia.com/gpu" not in container(head)["resources"]["limits"]
    for group in workers:
        assert container(group)["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert group["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert all(container(g)["image"] == "skipdecode:cuda" for g in groups())


def test_the_api_key_comes_from_the_example_secret():
    secret = yaml.safe_load(SECRET_EXAMPLE.read_text())
    env = {e["name"]: e for e in container(groups()[0]).get("env", [])}
    ref = env["SKIPDECODE_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": secret["metadata"]["name"], "key": next(iter(secret["stringData"]))}
