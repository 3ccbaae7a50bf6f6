"""A real Prometheus (tools/prometheus/build.sh) scraping the local plane as the chart's monitors say, for the
end-to-end metric tests: the scrape configuration is translated from the chart's own ServiceMonitor and PodMonitor
objects (their selectors, ports, relabelings and honorLabels, as prometheus-operator would), the rules file from
its PrometheusRule, and the dashboard's PromQL is evaluated with its variables substituted.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from helm_chart import tool_bin_dir
from ports import free_port


REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "charts" / "finetune-operator" / "dashboards" / "finetune.json"


def bin_dir() -> Path:
    """Where tools/prometheus/build.sh puts prometheus and promtool (FTO_PROMETHEUS_BIN overrides it)."""
    return tool_bin_dir("prometheus", "FTO_PROMETHEUS_BIN")


def _label(name: str) -> str:
    """A Kubernetes label name as a Prometheus meta label suffix (prometheus-operator's sanitising)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _relabelings(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    return [{keys.get(k, k): v for k, v in item.items()} for item in items]


def _namespaces(selector: dict[str, Any]) -> dict[str, Any]:
    return {} if selector.get("any") else {"namespaces": {"names": selector["matchNames"]}}


def _scrape_job(monitor: dict[str, Any], i: int, ep: dict[str, Any], role: str, kubeconfig: Path,
                relabel: list[dict[str, Any]]) -> dict[str, Any]:
    meta = monitor["metadata"]
    return {
        "job_name": f"{monitor['kind'][0].lower()}{monitor['kind'][1:]}/{meta['namespace']}/{meta['name']}/{i}",
        "honor_labels": ep.get("honorLabels", False),
        "scrape_interval": ep["interval"], "scrape_timeout": ep["scrapeTimeout"], "metrics_path": ep["path"],
        "kubernetes_sd_configs": [{"role": role, "kubeconfig_file": str(kubeconfig),
                                   **_namespaces(monitor["spec"]["namespaceSelector"])}],
        "relabel_configs": [*relabel, {"target_label": "endpoint", "replacement": ep["port"]},
                            *_relabelings(ep.get("relabelings", []))],
    }


def pod_monitor_jobs(monitor: dict[str, Any], kubeconfig: Path) -> list[dict[str, Any]]:
    """scrape_configs of a PodMonitor (role pod), one per podMetricsEndpoint; job = <namespace>/<name>."""
    meta, spec = monitor["metadata"], monitor["spec"]
    keep = [{"source_labels": [f"__meta_kubernetes_pod_labelpresent_{_label(e['key'])}"], "regex": "true",
             "action": "keep"} for e in spec["selector"].get("matchExpressions", []) if e["operator"] == "Exists"]
    keep += [{"source_labels": [f"__meta_kubernetes_pod_label_{_label(k)}"], "regex": v, "action": "keep"}
             for k, v in spec["selector"].get("matchLabels", {}).items()]
    return [_scrape_job(monitor, i, ep, "pod", kubeconfig, [
        *keep,
        # prometheus-operator leaves out pods that have finished
        {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)", "action": "drop"},
        {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": ep["port"], "action": "keep"},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"target_label": "job", "replacement": f"{meta['namespace']}/{meta['name']}"},
    ]) for i, ep in enumerate(spec["podMetricsEndpoints"])]


def service_monitor_jobs(monitor: dict[str, Any], kubeconfig: Path) -> list[dict[str, Any]]:
    """scrape_configs of a ServiceMonitor (role endpointslice), one per endpoint; job = the Service's name."""
    spec = monitor["spec"]
    keep = [{"source_labels": [f"__meta_kubernetes_service_label_{_label(k)}"], "regex": v, "action": "keep"}
            for k, v in spec["selector"].get("matchLabels", {}).items()]
    return [_scrape_job(monitor, i, ep, "endpointslice", kubeconfig, [
        *keep,
        {"source_labels": ["__meta_kubernetes_endpointslice_port_name"], "regex": ep["port"], "action": "keep"},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},
    ]) for i, ep in enumerate(spec["endpoints"])]

class Prometheus:
    """One Prometheus process with its own data folder, scraping what ``scrape_configs`` say."""

    def __init__(self, binary: Path, workdir: Path, scrape_configs: list[dict[str, Any]],
                 rule_groups: dict[str, Any] | None = None, evaluation_interval: str = "1s"):
        self.workdir, self.port = workdir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config: dict[str, Any] = {"global": {"scrape_interval": "1s", "evaluation_interval": evaluation_interval},
                                  "scrape_configs": scrape_configs}
        if rule_groups:
            (workdir / "rules.yaml").write_text(yaml.safe_dump(rule_groups, sort_keys=False))
            config["rule_files"] = [str(workdir / "rules.yaml")]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = workdir / "prometheus.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [str(binary), f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1d"],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if urllib.request.urlopen(f"{self.url}/-/ready", timeout=2).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"prometheus not ready in 60s:\n{self.log.read_text()[-3000:]}")

    def api(self, path: str, **params: Any) -> Any:
        url = f"{self.url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        with urllib.request.urlopen(url, timeout=30) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        return self.api("query", query=expr, **({"time": at} if at is not None else {}))["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = 2) -> list[dict[str, Any]]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def targets(self) -> list[dict[str, Any]]:
        return self.api("targets")["activeTargets"]

    def alerts(self) -> list[dict[str, Any]]:
        return self.api("alerts")["alerts"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def dashboard_queries(dashboard: dict[str, Any], variables: dict[str, str]) -> list[tuple[dict[str, Any], str]]:
    """(panel, PromQL with the dashboard's variables substituted) for every target of every panel."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
                expr = expr.replace(f"${{{name}:regex}}", re.escape(value)).replace(f"${{{name}}}", value)
                expr = expr.replace(f"${name}", value)
            assert "$" not in expr, f"{panel['title']}: unsubstituted variable in {expr}"
            out.append((panel, expr))
    return out


GPU_ONLY = {"MFU", "GPU memory (peak, PyTorch)", "GPU utilisation (dcgm-exporter)", "GPU memory used (dcgm-exporter)"}


def check_dashboard(prom: Prometheus, variables: dict[str, str], start: float, end: float) -> dict[str, list[float]]:
    """Every dashboard expression over [start, end] (timeseries) or at ``end`` (stats): non-empty, finite, >= 0;
    the GPU panels empty with a text that says why. The values by panel title."""
    dashboard = json.loads(DASHBOARD.read_text())
    seen: dict[str, list[float]] = {}
    problems = []
    for panel, expr in dashboard_queries(dashboard, variables):
        if panel["type"] == "timeseries":
            values = [float(v) for s in prom.query_range(expr, start, end, 1) for _, v in s["values"]]
        else:
            values = [float(s["value"][1]) for s in prom.query(expr, at=end)]
        finite = [v for v in values if math.isfinite(v)]
        if panel["title"] in GPU_ONLY:
            if values:
                problems.append(f"{panel['title']}: a CPU run without dcgm-exporter has {values[:3]} for {expr}")
            if not panel["fieldConfig"]["defaults"].get("noValue"):
                problems.append(f"{panel['title']}: empty without saying why")
        elif not finite or min(finite) < 0:
            problems.append(f"{panel['title']}: {values[:5]} for {expr}")
        seen.setdefault(panel["title"], []).extend(finite)
    assert not problems, "\n".join(problems)
    return seen
