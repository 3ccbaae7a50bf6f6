"""A hung rank on the real node: the operator's Stalled condition and the chart's FineTuneJobStalled alert, both from
the same threshold (operator.stalledAfterSeconds), on a job that really stopped stepping.

Two CPU pods train one model; rank 1's trainer process is stopped (SIGSTOP) mid-run, so rank 0 waits in the next
collective while its metrics endpoint still answers with the same step: what a hung data loader, a dead NIC or a
wedged GPU looks like from outside. Prometheus (tools/prometheus/build.sh) scrapes rank 0 as the chart's PodMonitor
says and evaluates the chart's PrometheusRule. SIGCONT lets it go on, and the condition clears.
"""

from __future__ import annotations

import subprocess
import time
from typing import Iterator

import pytest
from helm_chart import CHART

from e2e.conftest import ON_REAL_NODE, Cluster, chart_prometheus
from prometheus_live import Prometheus

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

JOB = "hung"
STALLED_AFTER = 40  # seconds: short enough for a test, longer than a checkpoint or an evaluation here
DEFAULT_STALLED_AFTER = 900  # the chart's default, which the e2e release runs with otherwise


def _stalled_after(cluster: Cluster, seconds: int) -> None:
    cp = cluster.cp
    helm = [str(cp.bin_dir / "helm"), "--kubeconfig", str(cp.kubeconfig)]
    subprocess.run([*helm, "upgrade", cluster.release, str(CHART), "-n", cluster.system_ns, "--reuse-values",
                    "--set", f"operator.stalledAfterSeconds={seconds}", "--wait", "--timeout", "3m"],
                   capture_output=True, text=True, check=True, timeout=240)


@pytest.fixture(scope="module")
def prometheus(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """The release with a short stall threshold, and Prometheus with its rules firing at once (`for: 0s`)."""
    _stalled_after(cluster, STALLED_AFTER)
    server = chart_prometheus(cluster, tmp_path_factory.mktemp("prometheus-stalled"), rule_for="0s")
    try:
        yield server
    finally:
        server.stop()
        _stalled_after(cluster, DEFAULT_STALLED_AFTER)


def _signal_trainers(cluster: Cluster, pod: str, signal: str) -> None:
    """Send ``signal`` to the trainer processes of ``pod`` (not PID 1, torchrun's agent, which only waits)."""
    code = ("import os, signal\n"
            "for p in filter(str.isdigit, os.listdir('/proc')):\n"
            "    if int(p) in (1, os.getpid()): continue\n"
            "    try: cmd = open(f'/proc/{p}/cmdline', 'rb').read()\n"
            "    except OSError: continue\n"
            f"    if b'finetune_trainer' in cmd: os.kill(int(p), signal.{signal})\n")
    cluster.cp.kubectl("exec", "-n", cluster.ns, pod, "-c", "trainer", "--", "python", "-c", code)


def _stalled(cluster: Cluster) -> dict:
    return next((c for c in cluster.status(JOB).get("conditions", []) if c["type"] == "Stalled"), {})


def test_a_hung_rank_sets_stalled_and_fires_the_stalled_alert(cluster: Cluster, prometheus: Prometheus) -> None:
    cp, prom = cluster.cp, prometheus
    cluster.apply_job(JOB, **{
        "model": {"source": "pvc://e2e-data/models/bert-wide"}, "task": "sequence-classification",
        "dataset": {"source": "pvc://e2e-data/data/big", "columns": {"text": ["text"], "label": "label"},
                    "maxLength": 32},
        "strategy": {"type": "partial", "layers": "last:2"},
        "training": {"epochs": 3, "batchSize": 4, "learningRate": 1e-3, "logEvery": 1, "saveEvery": 1000},
        "resources": {"cpu": "500m", "memory": "2Gi", "nodes": 2, **ON_REAL_NODE},
        "output": {"location": f"pvc://e2e-data/out/{JOB}"},
    })
    sel = f'namespace="{cluster.ns}", finetunejob="{JOB}"'
    # Stepping, scraped, and long enough that the alert's `offset` reaches back into this run.
    cp.wait_for(lambda: prom.query(f"finetune_trainer_step{{{sel}}} > 5"), timeout=420, interval=1,
                what="rank 0 stepping and scraped")
    assert not _stalled(cluster).get("status") == "True"
    rank1 = next(p["metadata"]["name"] for p in cluster.pods(JOB, 1)
                 if p["metadata"]["annotations"].get("batch.kubernetes.io/job-completion-index") == "1")
    _signal_trainers(cluster, rank1, "SIGSTOP")
    stopped_at = time.monotonic()
    try:
        condition = cp.wait_for(lambda: (c := _stalled(cluster)).get("status") == "True" and c,
                                timeout=STALLED_AFTER + 90, interval=1, what="the Stalled condition")
        took = time.monotonic() - stopped_at
        assert took >= STALLED_AFTER - 5, f"Stalled after {took:.0f}s, before the threshold"
        assert condition["reason"] == "NoStepProgress" and cluster.status(JOB)["phase"] == "Running", condition
        assert "has not moved since" in condition["message"], condition
        warning = cp.wait_for(lambda: [e for e in cluster.events(JOB) if e["reason"] == "Stalled"], timeout=30)
        assert warning[0]["type"] == "Warning", warning

        def firing() -> list:
            return [a for a in prom.alerts() if a["labels"].get("alertname") == "FineTuneJobStalled"
                    and a["labels"].get("finetunejob") == JOB and a["state"] == "firing"]
        [alert] = cp.wait_for(firing, timeout=STALLED_AFTER + 60, interval=1, what="FineTuneJobStalled firing")
        assert alert["labels"]["namespace"] == cluster.ns
        print(f"\nStalled condition {took:.0f}s after the rank stopped (threshold {STALLED_AFTER}s); "
              f"alert firing {time.monotonic() - stopped_at:.0f}s after")
    finally:
        _signal_trainers(cluster, rank1, "SIGCONT")
    # Steps move again: the condition turns False, the job goes on.
    cleared = cp.wait_for(lambda: (c := _stalled(cluster)).get("status") == "False" and c, timeout=120, interval=1,
                          what="the Stalled condition cleared")
    assert cleared["reason"] == "Stepping" and cluster.status(JOB)["phase"] == "Running", cleared
    cp.kubectl("delete", "finetunejob", JOB, "-n", cluster.ns, "--wait=false")
