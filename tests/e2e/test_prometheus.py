"""Prometheus scraping a real job on the real node, as the chart's monitors say, and the chart's dashboard and
alert expressions evaluated on what it scraped (docs/metrics.md).

Prometheus (tools/prometheus/build.sh) runs on this machine with a configuration translated from the chart's own
ServiceMonitor and PodMonitor (tests/prometheus_live.py); pod IPs are reachable over the node's bridge. Every PromQL
expression of the dashboard, with its variables substituted, must give a non-empty, plausible result while the job
runs and over its run once it has finished; only the GPU panels (a CPU job, no dcgm-exporter) are empty.
"""

from __future__ import annotations

import time
from typing import Iterator

import pytest

from e2e.conftest import ON_REAL_NODE, Cluster, chart_prometheus
from prometheus_live import Prometheus, check_dashboard

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

JOB = "scraped"
TRAINING_METRICS = {"trainLoss", "evalLoss", "learningRate", "evalAccuracy", "evalF1", "samplesPerSecond",
                    "tokensPerSecond"}


@pytest.fixture(scope="module")
def prometheus(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    server = chart_prometheus(cluster, tmp_path_factory.mktemp("prometheus"))
    try:
        yield server
    finally:
        server.stop()


def _check_dashboard(prom: Prometheus, cluster: Cluster, start: float, end: float) -> dict[str, list[float]]:
    """check_dashboard for this job, and label_values() of the dashboard's variables list it."""
    variables = {"namespace": cluster.ns, "finetunejob": JOB, "__rate_interval": "30s", "__range": "15m"}
    seen = check_dashboard(prom, variables, start, end)
    assert cluster.ns in prom.api("label/namespace/values", **{"match[]": "finetune_trainer_step"})
    jobs = prom.api("label/finetunejob/values", **{"match[]": f'finetune_trainer_step{{namespace="{cluster.ns}"}}'})
    assert JOB in jobs, jobs
    return seen


def test_dashboard_and_alerts_on_a_real_scraped_job(cluster: Cluster, prometheus: Prometheus) -> None:
    prom, ns = prometheus, cluster.ns
    start = time.time() - 5
    cluster.apply_job(JOB, **{
        "model": {"source": "pvc://e2e-data/models/bert-wide"}, "task": "sequence-classification",
        "dataset": {"source": "pvc://e2e-data/data/big", "columns": {"text": ["text"], "label": "label"},
                    "maxLength": 32},
        "strategy": {"type": "partial", "layers": "last:2"},
        # 800 steps: long enough to be checked while it runs (a scraped series ends with its pod)
        "training": {"epochs": 2, "batchSize": 4, "learningRate": 1e-3, "logEvery": 1, "evalEvery": 40,
                     "saveEvery": 100},
        "resources": {"cpu": "1", "memory": "2Gi", **ON_REAL_NODE},
        "output": {"location": f"pvc://e2e-data/out/{JOB}", "keepCheckpoints": 2},
    })
    sel = f'namespace="{ns}", finetunejob="{JOB}"'

    def scraped_after_a_checkpoint() -> bool:
        if cluster.status(JOB).get("phase") in ("Succeeded", "Failed"):
            raise AssertionError(f"finished before it was scraped mid-run: {cluster.diagnose(JOB)}")
        return bool(prom.query(f"finetune_trainer_checkpoints_total{{{sel}}} > 0")
                    and prom.query(f"finetune_trainer_eval_metric{{{sel}}}")
                    and prom.query(f"rate(finetune_trainer_tokens_total{{{sel}}}[30s]) > 0"))

    cluster.cp.wait_for(scraped_after_a_checkpoint, timeout=600, interval=1,
                        what="a checkpoint and an evaluation scraped")
    time.sleep(5)  # a few more scrapes: a range query's steps lie before now, each needs two samples in its window
    running = _check_dashboard(prom, cluster, start, time.time())
    assert cluster.status(JOB).get("phase") == "Running", "finished during the running checks: a longer job is needed"
    assert 0 < max(running["Progress"]) < 1 and max(running["Step"]) > 0
    assert max(running["Tokens per second"]) > 0 and max(running["Checkpoints written"]) >= 1
    # The only trainer target is rank 0 of this job and it is up; the operator's target is up.
    targets = [t for t in prom.targets() if t["labels"].get("namespace") in (ns, cluster.system_ns)]
    assert targets and all(t["health"] == "up" for t in targets), [(t["scrapeUrl"], t["lastError"]) for t in targets]
    # The alerts' selectors match what the monitors produce; nothing fires for a healthy running job.
    operator_up = next(r for r in prom.rules if r["alert"] == "FineTuneOperatorDown")["expr"]
    assert not prom.query(operator_up), operator_up  # absent(up{job=<the Service>, namespace=...} == 1) is empty
    stalled = next(r for r in prom.rules if r["alert"] == "FineTuneJobStalled")["expr"]
    assert prom.query("max by (namespace, finetunejob) (finetune_trainer_step)")  # what the stalled rule reads
    assert not prom.query(stalled)
    firing = [a for a in prom.alerts() if a["state"] == "firing" and (a["labels"].get("finetunejob") == JOB or
              a["labels"]["alertname"] in ("FineTuneOperatorDown", "FineTuneOperatorReconcileErrors"))]
    assert not firing, firing

    status = cluster.wait_phase(JOB, ("Succeeded", "Failed"), timeout=900)
    assert status["phase"] == "Succeeded", cluster.diagnose(JOB)
    # status.metrics: training metrics only, after real checkpoints (no *Created, no counters).
    assert status["checkpoint"] and set(status["metrics"]) <= TRAINING_METRICS, status["metrics"]
    last = max(t for s in prom.query_range(f"finetune_trainer_step{{{sel}}}", start, time.time(), 1)
               for t, _ in s["values"])
    finished = _check_dashboard(prom, cluster, start, last)
    assert max(running["Progress"]) < max(finished["Progress"]) <= 1 and max(finished["Progress"]) > 0.9
    assert max(finished["Checkpoints written"]) >= max(running["Checkpoints written"])
