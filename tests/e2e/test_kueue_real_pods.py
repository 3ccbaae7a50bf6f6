"""Kueue preemption with a real trainer (marker e2e): Kueue (tools/kueue, tests/cluster/kueue_process.py) suspends
a running FineTuneJob's Job for a higher-priority one; the kubelet sends the trainer SIGTERM, it saves a checkpoint
and exits; when Kueue admits the Job again, the same attempt resumes from that checkpoint and finishes.

tests/cluster/test_kueue.py shows the queueing, priority and status on KWOK pods; what only real pods show is the
checkpoint taken on the way out and the resume. The queue: one ClusterQueue whose quota is 1 CPU (the real node has
2), so one 1-CPU job at a time, with preemption of lower priorities.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Iterator

import pytest

from cluster.kueue_process import KUEUE_NAMESPACE_LABEL, running_kueue
from e2e.conftest import Cluster
from e2e.test_real_pods import spec

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]


@pytest.fixture(scope="module")
def kueue_queue(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A running Kueue, a LocalQueue in the e2e namespace and two PriorityClasses; yields their names."""
    suffix = uuid.uuid4().hex[:6]
    names = {"queue": f"e2e-{suffix}", "low": f"e2e-low-{suffix}", "high": f"e2e-high-{suffix}"}
    quota = [("cpu", "1"), ("memory", "8Gi")]
    objects: list[dict[str, Any]] = [
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": names["queue"]}},
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": names["queue"]},
         "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": cluster.ns}},
                  "preemption": {"withinClusterQueue": "LowerPriority"},
                  "resourceGroups": [{"coveredResources": [r for r, _ in quota], "flavors": [{
                      "name": names["queue"], "resources": [{"name": r, "nominalQuota": q} for r, q in quota]}]}]}},
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
         "metadata": {"name": names["queue"], "namespace": cluster.ns}, "spec": {"clusterQueue": names["queue"]}},
        *({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": names[level]},
           "value": value} for level, value in (("low", 100), ("high", 1000))),
    ]
    with running_kueue(cluster.cp, tmp_path_factory.mktemp("kueue")):
        cluster.cp.kubectl("label", "--overwrite", "namespace", cluster.ns, f"{KUEUE_NAMESPACE_LABEL}=true")
        cluster.cp.apply(objects)
        try:
            yield names
        finally:
            cluster.cp.kubectl("label", "namespace", cluster.ns, f"{KUEUE_NAMESPACE_LABEL}-", check=False)
            for obj in reversed(objects):
                cluster.cp.kubectl("delete", obj["kind"].lower(), obj["metadata"]["name"], "-n", cluster.ns,
                                   "--ignore-not-found", "--wait=false", check=False)


def test_kueue_preempted_trainer_saves_a_checkpoint_and_resumes_it(cluster: Cluster,
                                                                    kueue_queue: dict[str, str]) -> None:
    queue = kueue_queue["queue"]
    low = spec("bert-wide", "big", batch=4, name="kueue-low", queueName=queue)
    low["resources"]["priorityClassName"] = kueue_queue["low"]
    cluster.apply_job("kueue-low", **low)
    planned = -(-1600 // 4)  # one epoch of data/big in batches of 4 (as test_real_pods' preemption test)

    def mid_epoch() -> int | None:
        step = (cluster.status("kueue-low").get("progress") or {}).get("step") or 0
        return step if 5 <= step < planned // 2 else None

    cluster.cp.wait_for(mid_epoch, timeout=300, interval=0.5, what="kueue-low mid-epoch")
    high = spec(name="kueue-high", queueName=queue)
    high["resources"]["priorityClassName"] = kueue_queue["high"]
    cluster.apply_job("kueue-high", **high)

    def preempted() -> dict[str, Any] | None:
        ready = cluster.ready_condition("kueue-low")
        return ready if ready.get("reason") == "Preempted" else None
    ready = cluster.cp.wait_for(preempted, timeout=120, interval=1, what="kueue-low preempted")
    assert "resumes from the last checkpoint" in ready["message"], ready["message"]
    assert cluster.wait_phase("kueue-high", ("Succeeded", "Failed"), timeout=600)["phase"] == "Succeeded"
    status = cluster.wait_phase("kueue-low", ("Succeeded", "Failed"), timeout=900)
    assert status["phase"] == "Succeeded", cluster.diagnose("kueue-low")
    assert status["attempts"] == 1  # preempted and resumed, not retried
    [pod] = cluster.pods("kueue-low", 1)  # the pod of the Job Kueue admitted again
    log = cluster.logs(pod["metadata"]["name"])
    resumed = re.search(r"resumed from \S+: step (\d+)/(\d+)", log)
    assert resumed, log[-3000:]
    assert 0 < int(resumed.group(1)) < int(resumed.group(2)) == planned
    assert status["progress"]["step"] == status["progress"]["totalSteps"] == planned
    assert {"Preempted", "TrainingSucceeded"} <= {e["reason"] for e in cluster.events("kueue-low")}
