"""promtool on the Prometheus files, on the dashboard's queries and on Metrics' exposition."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml
from deploy_helpers import DOCKER, dashboard_exprs, load_dashboard, to_plain_promql

PROMETHEUS = DOCKER / "prometheus"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "skipdecode.json"
RULES_TEST = Path(__file__).with_name("prometheus_rules_test.yml")
COLON_PROBLEM = re.compile(r"^skipdecode:\S+ metric names should not contain ':'$")


def run(*args: str, stdin: bytes | None = None, cwd: Path | None = None):
    return subprocess.run(args, input=stdin, capture_output=True, timeout=60, cwd=cwd)


def output(result: subprocess.CompletedProcess) -> str:
    return (result.stdout + result.stderr).decode()


def test_promtool_accepts_the_config_and_its_rule_files(promtool):
    result = run(promtool, "check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, output(result)
    assert "1 rule files found" in output(result)


def test_promtool_accepts_the_rules(promtool):
    result = run(promtool, "check", "rules", str(PROMETHEUS / "rules.yml"))
    assert result.returncode == 0, output(result)


def test_rules_compute_and_fire_as_specified(promtool):
    # Recording rules give the hand-computed values; the alerts fire at (and only at) the
    # expected times and labels. See the comments in prometheus_rules_test.yml.
    result = run(promtool, "test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert result.returncode == 0, output(result)


def test_dashboard_queries_are_valid_promql(promtool, tmp_path):
    # promtool parses expressions only inside rule files: wrap each query in a recording rule.
    exprs = dashboard_exprs(load_dashboard(DASHBOARD))
    rules = [
        {"record": f"dashboard:query_{i}", "expr": to_plain_promql(e)} for i, e in enumerate(exprs)
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, output(result)
    assert f"SUCCESS: {len(exprs)} rules found" in output(result)


def test_exposition_lints_clean_but_for_the_colon_prefix(promtool, fed_metrics):
    # promtool's linter reserves ':' for recording rules, while the names follow vLLM's
    # `vllm:`-style prefix on purpose. Every problem it reports must be that one...
    body, _ = fed_metrics.render()
    result = run(promtool, "check", "metrics", stdin=body)
    problems = [line for line in output(result).splitlines() if line.strip()]
    assert problems, "expected promtool to flag the ':' in the names (has the linter changed?)"
    assert [p for p in problems if not COLON_PROBLEM.match(p)] == []
    # ... and with the prefix spelled `skipdecode_`, nothing at all is left.
    plain = body.replace(b"skipdecode:", b"skipdecode_")
    result = run(promtool, "check", "metrics", stdin=plain)
    assert result.returncode == 0, output(result)
    assert output(result).strip() == ""
