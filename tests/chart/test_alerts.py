"""The chart's alerts (PrometheusRule) checked and unit-tested by promtool: each alert fires on the input series
that should fire it and on no other (tests/chart/alerts_test.yaml), as the chart renders them by default; and the
scrape configuration the live test derives from the chart's monitors (tests/prometheus_live.py) is one Prometheus
accepts.

promtool comes from tools/prometheus/build.sh (Prometheus built from its Go module); without it the tests skip,
unless FTO_REQUIRE_CLUSTER says every tool must be there.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_chart import ALL_ON, find, one, render, require_tool
from prometheus_live import bin_dir, pod_monitor_jobs, service_monitor_jobs

ALERTS = ["FineTuneJobStalled", "FineTuneJobFailed", "FineTuneJobRetriesPilingUp", "FineTuneOperatorDown",
          "FineTuneOperatorNoLeader", "FineTuneOperatorReconcileErrors"]
UNIT_TESTS = Path(__file__).with_name("alerts_test.yaml")


@pytest.fixture(scope="module")
def promtool() -> Path:
    return require_tool(bin_dir() / "promtool", "tools/prometheus/build.sh")


def rule_groups(*values: str | Path, sets: tuple[str, ...] = ()) -> dict[str, Any]:
    """The PrometheusRule's spec (its rule groups) as the chart renders it: what `promtool` reads as a rules file."""
    rule = one(render(*values, sets=("monitoring.prometheusRule.enabled=true", *sets)), "PrometheusRule")
    return rule["spec"]


def promtool_run(promtool: Path, *args: str, cwd: Path) -> str:
    proc = subprocess.run([str(promtool), *args], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert proc.returncode == 0, f"promtool {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout + proc.stderr


def test_alert_rules_pass_promtool_check_and_unit_tests(promtool: Path, tmp_path: Path) -> None:
    spec = rule_groups()
    assert [r["alert"] for g in spec["groups"] for r in g["rules"]] == ALERTS
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    assert f"SUCCESS: {len(ALERTS)} rules found" in promtool_run(promtool, "check", "rules", "rules.yaml", cwd=tmp_path)
    out = promtool_run(promtool, "test", "rules", UNIT_TESTS.name, cwd=tmp_path)
    assert "SUCCESS" in out, out
    # Every alert is exercised by a case that expects it to fire.
    tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]}
    assert fired == set(ALERTS)


def test_alerts_follow_their_values(promtool: Path, tmp_path: Path) -> None:
    spec = rule_groups(ALL_ON)  # operator.stalledAfterSeconds 1200, FineTuneJobFailed turned off
    rules = {r["alert"]: r for g in spec["groups"] for r in g["rules"]}
    assert set(rules) == set(ALERTS) - {"FineTuneJobFailed"}
    assert "offset 1200s" in rules["FineTuneJobStalled"]["expr"]
    assert 'up{job="fto-all-on", namespace="finetune-system"}' in rules["FineTuneOperatorDown"]["expr"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    promtool_run(promtool, "check", "rules", "rules.yaml", cwd=tmp_path)


def test_no_prometheus_rule_unless_enabled() -> None:
    assert not find(render(), "PrometheusRule")
    rule = one(render(ALL_ON), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prometheus"  # monitoring.labels: what Prometheus selects


def test_scrape_config_translated_from_the_monitors_is_valid(promtool: Path, tmp_path: Path) -> None:
    objects = render(ALL_ON)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    jobs = [*service_monitor_jobs(one(objects, "ServiceMonitor"), kubeconfig),
            *pod_monitor_jobs(one(objects, "PodMonitor"), kubeconfig)]
    assert [j["honor_labels"] for j in jobs] == [True, False]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({"scrape_configs": jobs}, sort_keys=False))
    assert "SUCCESS" in promtool_run(promtool, "check", "config", "prometheus.yml", cwd=tmp_path)
