"""The dashboard and the rules use only series that Metrics really exports, and show all of them."""

from __future__ import annotations

import yaml
from deploy_helpers import (
    DOCKER,
    dashboard_exprs,
    exported_series,
    family,
    iter_panels,
    load_dashboard,
    load_rules,
    metric_names,
)

GRAFANA = DOCKER / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "skipdecode.json"
RULES = DOCKER / "prometheus" / "rules.yml"


def recorded_names() -> set[str]:
    return {rule["record"] for rule in load_rules(RULES) if "record" in rule}


def test_dashboard_queries_name_only_exported_or_recorded_series(fed_metrics):
    known = set(exported_series(fed_metrics)) | recorded_names()
    used = {
        name for expr in dashboard_exprs(load_dashboard(DASHBOARD)) for name in metric_names(expr)
    }
    assert used, "the dashboard queries no skipdecode series"
    assert used - known == set()


def test_rules_name_only_exported_or_recorded_series(fed_metrics):
    known = set(exported_series(fed_metrics)) | recorded_names()
    used = {name for rule in load_rules(RULES) for name in metric_names(rule["expr"])}
    assert used - known == set()
    assert "skipdecode:kv_cache_usage_perc" in used  # the KV alert watches the real gauge


def test_every_exported_metric_has_a_panel(fed_metrics):
    # A metric nobody can see on the dashboard is either dead or missing a panel.
    exported = {
        family(name) for name in exported_series(fed_metrics) if name.startswith("skipdecode:")
    }
    used = dashboard_exprs(load_dashboard(DASHBOARD))
    shown = {family(name) for expr in used for name in metric_names(expr)}
    assert exported - shown == set()


def test_panels_use_the_datasource_variable_and_have_unique_ids():
    dashboard = load_dashboard(DASHBOARD)
    panels = list(iter_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_panels_do_not_overlap():
    cells: dict[tuple[int, int], str] = {}
    for panel in iter_panels(load_dashboard(DASHBOARD)):
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_provisioning_points_grafana_at_prometheus_and_the_dashboard_folder():
    (datasource,) = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["isDefault"] is True
    (provider,) = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "skipdecode.yml").read_text()
    )["providers"]
    assert provider["type"] == "file"
    # compose.yaml mounts docker/grafana/dashboards at this path (checked in test_compose.py).
    assert provider["options"]["path"] == "/etc/grafana/dashboards"
