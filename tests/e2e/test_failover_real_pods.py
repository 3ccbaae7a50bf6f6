"""High availability on the real node: the chart's two operator pods (leader election on the release's Lease) while
a trainer really trains. The leading pod is deleted without a grace period (its node lost, as far as the pod
knows), then the chart is upgraded (RollingUpdate) mid-run; the standby leads within 15 s, the job ends Succeeded
with one Job and one Event for its end (a run that goes well posts no other). tests/cluster/test_failover.py does
the same with 50 KWOK jobs.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter

import pytest
from helm_chart import CHART

from e2e.conftest import Cluster
from e2e.test_real_pods import spec

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

JOB = "ha"


def _holder(cluster: Cluster) -> str:
    lease = cluster.cp.kubectl_json("get", "lease", f"{cluster.release}-finetune-operator", "-n", cluster.system_ns)
    return (lease.get("spec") or {}).get("holderIdentity") or ""


def _operator_pods(cluster: Cluster) -> list[str]:
    pods = cluster.cp.kubectl_json("get", "pods", "-n", cluster.system_ns,
                                   "-l", "app.kubernetes.io/name=finetune-operator")["items"]
    return [p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")]


def test_failover_of_the_leading_pod_and_a_rolling_upgrade_while_a_job_trains(cluster: Cluster) -> None:
    cp = cluster.cp
    leader = cp.wait_for(lambda: _holder(cluster), timeout=60, what="a Lease holder")
    assert leader in _operator_pods(cluster) and len(_operator_pods(cluster)) == 2
    cluster.apply_job(JOB, **spec("bert-wide", "big", batch=4, name=JOB))
    cluster.wait_phase(JOB, ("Running",), timeout=300)

    deleted = time.monotonic()
    cp.kubectl("delete", "pod", leader, "-n", cluster.system_ns, "--grace-period=0", "--force")
    cp.wait_for(lambda: _holder(cluster) not in ("", leader), timeout=60, interval=0.2, what="a new Lease holder")
    takeover = time.monotonic() - deleted
    print(f"\nreal node: {_holder(cluster)} holds the Lease {takeover:.1f} s after {leader} was deleted")
    assert takeover <= 15, takeover

    # `helm upgrade` with a changed pod template: a rolling update of both pods while the trainer still trains.
    helm = [str(cp.bin_dir / "helm"), "--kubeconfig", str(cp.kubeconfig)]
    rolled = f"podAnnotations.finetune\\.io/rolled={int(time.time())}"
    subprocess.run([*helm, "upgrade", cluster.release, str(CHART), "-n", cluster.system_ns, "--reuse-values",
                    "--set-string", rolled, "--wait", "--timeout", "3m"],
                   capture_output=True, text=True, check=True, timeout=240)
    assert cluster.status(JOB).get("phase") in ("Running", "Succeeded")
    # One of the new pods leads: `--wait` returns once they are ready, while an old one may still be finishing its
    # passes under the Lease before it releases it on SIGTERM.
    cp.wait_for(lambda: _holder(cluster) in _operator_pods(cluster), timeout=60, interval=0.5,
                what="a new pod to lead after the rolling update")

    status = cluster.wait_phase(JOB, ("Succeeded",), timeout=600)
    assert status["attempts"] == 1
    jobs = cp.kubectl_json("get", "jobs", "-n", cluster.ns, "-l", f"finetune.io/job={JOB}")["items"]
    assert [j["metadata"]["name"] for j in jobs] == [f"{JOB}-a1"]
    reasons = Counter(e["reason"] for e in cluster.events(JOB))
    # A run that goes well posts only its end (the routine steps are in status, events.py): once, after failover.
    assert reasons["TrainingSucceeded"] == 1, reasons
    assert max(reasons.values()) == 1, reasons
