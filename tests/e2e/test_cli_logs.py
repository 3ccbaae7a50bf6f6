"""`finetune logs` and `finetune wait` on the real node, where pods have logs: a job whose first attempt is
interrupted (SIGTERM to the trainer, which saves a checkpoint and exits 75, its pod kept) and whose second attempt
resumes. The logs come out attempt by attempt, in order, each under its header. The job also uses spec.pod (its
variable, a volume under /tmp, its tolerations) so the overrides are proven on a kubelet, not only on KWOK.

Run by the lead (images rebuilt):  FTO_KEEP_CLUSTER=1 pytest -m e2e tests/e2e/test_cli_logs.py
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from e2e.conftest import ON_REAL_NODE, Cluster
from e2e.test_real_pods import spec

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

POD_ENV = "from-spec-pod-4e1d"


def finetune(cluster: Cluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "finetune_operator.cli", *args, "-n", cluster.ns,
                           "--kubeconfig", str(cluster.cp.kubeconfig)], capture_output=True, text=True,
                          timeout=timeout)


def test_logs_of_an_interrupted_and_resumed_job_come_attempt_by_attempt(cluster: Cluster) -> None:
    body = spec("bert-wide", "big", batch=4, name="cli-logs")
    body["resources"] = {"cpu": "1", "memory": "2Gi", "nodeSelector": ON_REAL_NODE["nodeSelector"]}
    body["pod"] = {"env": [{"name": "FTO_E2E_POD_ENV", "value": POD_ENV}],
                   "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "64Mi"}}],
                   "volumeMounts": [{"name": "scratch", "mountPath": "/tmp/scratch"}],
                   "tolerations": ON_REAL_NODE["tolerations"]}
    cluster.apply_job("cli-logs", **body)

    def training() -> dict[str, Any] | None:
        progress = cluster.status("cli-logs").get("progress") or {}
        pods = [p for p in cluster.pods("cli-logs", 1) if p["status"].get("phase") == "Running"]
        return pods[0] if pods and (progress.get("step") or 0) >= 5 else None

    pod = cluster.cp.wait_for(training, timeout=300, interval=0.5, what="attempt 1 training")["metadata"]["name"]
    exec_ = ("exec", "-n", cluster.ns, pod, "-c", "trainer", "--")
    assert cluster.cp.kubectl(*exec_, "printenv", "FTO_E2E_POD_ENV").stdout.strip() == POD_ENV
    cluster.cp.kubectl(*exec_, "touch", "/tmp/scratch/written")  # the user's volume, writable by the trainer
    # SIGTERM to the trainer (PID 1) without deleting the pod: it checkpoints, exits 75, and its pod (and log) stay.
    cluster.cp.kubectl(*exec_, "python", "-c", "import os, signal; os.kill(1, signal.SIGTERM)")

    waited = finetune(cluster, "wait", "cli-logs", "--for=complete", "--timeout=600", timeout=660)
    assert waited.returncode == 0 and waited.stdout.startswith("cli-logs: Succeeded"), cluster.diagnose("cli-logs")
    assert cluster.status("cli-logs")["attempts"] == 2

    logs = finetune(cluster, "logs", "cli-logs")
    assert logs.returncode == 0, logs.stderr
    text = logs.stdout
    first, second = f"==> attempt 1, rank 0: pod {pod} (Failed) <==", "==> attempt 2, rank 0: pod cli-logs-a2-"
    assert first in text and second in text, text[-3000:]
    attempt1, attempt2 = text.split(second)
    assert attempt1.index(first) < attempt1.index("SIGTERM received: saving a checkpoint"), attempt1[-3000:]
    assert "resumed from" in attempt2 and "resumed from" not in attempt1
    assert "[####################] 100%" in finetune(cluster, "get", "cli-logs").stdout
