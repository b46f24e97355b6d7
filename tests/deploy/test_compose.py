"""docker-compose accepts the stack, and its services, mounts and ports fit the other configs."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml
from deploy_helpers import DOCKER, REPO

COMPOSE = DOCKER / "compose.yaml"
COMPOSE_GPU = DOCKER / "compose.gpu.yaml"


def compose_config(docker_compose: str, *files) -> dict:
    """The stack as docker-compose resolves it (interpolated, paths made absolute)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKIPDECODE_", "MODELS_DIR"))}
    args = [docker_compose]
    for path in files:
        args += ["-f", str(path)]
    result = subprocess.run([*args, "config"], capture_output=True, timeout=60, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    return yaml.safe_load(result.stdout)


@pytest.fixture
def stack(docker_compose) -> dict:
    return compose_config(docker_compose, COMPOSE)


def mounts(service: dict) -> dict[str, str]:
    """Container path -> host path (or volume name) of a service's mounts."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):  # docker-compose 1.x: "source:target[:mode]"
            source, target = volume.split(":")[:2]
        else:  # compose v2: long syntax
            source, target = volume["source"], volume["target"]
        found[target] = source
    return found


def published(service: dict) -> dict[int, int]:
    """Container port -> host port."""
    return {int(p["target"]): int(p["published"]) for p in service.get("ports", [])}


def test_server_builds_the_cpu_image_from_the_repository_root(stack):
    build = stack["services"]["skipdecode"]["build"]
    assert os.path.samefile(build["context"], REPO)
    assert (REPO / build["dockerfile"]).is_file()
    assert published(stack["services"]["skipdecode"]) == {8000: 8000}
    assert "/models" in mounts(stack["services"]["skipdecode"])


def test_prometheus_scrapes_the_server_service(stack):
    prometheus = stack["services"]["prometheus"]
    config_dir = mounts(prometheus)["/etc/prometheus"]
    assert os.path.samefile(config_dir, DOCKER / "prometheus")
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in stack["services"]
    assert int(port) in published(stack["services"][host])


def test_grafana_mounts_provisioning_and_dashboards(stack):
    grafana = stack["services"]["grafana"]
    grafana_mounts = mounts(grafana)
    assert os.path.samefile(
        grafana_mounts["/etc/grafana/provisioning"], DOCKER / "grafana" / "provisioning"
    )
    dashboards = grafana_mounts["/etc/grafana/dashboards"]
    assert os.path.samefile(dashboards, DOCKER / "grafana" / "dashboards")
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DOCKER / "grafana" / "dashboards" / os.path.basename(home)).is_file()
    datasource = yaml.safe_load(
        (DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    assert 9090 in published(stack["services"]["prometheus"])


def test_gpu_override_builds_the_cuda_image_and_reserves_a_gpu(docker_compose):
    server = compose_config(docker_compose, COMPOSE, COMPOSE_GPU)["services"]["skipdecode"]
    assert server["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    (device,) = server["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
