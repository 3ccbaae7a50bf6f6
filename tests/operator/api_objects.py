"""FineTuneJobs, batch/v1 Jobs and pods as the API server returns them, fields nothing reads included
(managedFields, owner references, counters), for the tests of the operator's view of its children and of a pass."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from finetune_operator.children import Children

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
NS = "ml"
RESOURCE_VERSIONS = iter(range(100, 10**6))  # what the API server would hand out next


def ftj(name: str = "mrpc", status: dict | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1, "resourceVersion": "1"},
        "spec": {"model": {"source": "hf://org/model"}, "task": "sequence-classification",
                 "dataset": {"source": "pvc://data/reviews"}, "strategy": {"type": "partial", "layers": "last:2"},
                 "output": {"location": "pvc://ckpt/run"}, "runPolicy": {"backoffLimit": 3}},
        "status": status or {},
    }


def _meta(name: str, owner: str, attempt: int, rv: int | None = None, uid: str | None = None, **extra) -> dict:
    """Metadata as the API server returns it, with the fields nothing reads (managedFields, owner references)."""
    return {
        "name": name, "namespace": NS, "uid": uid or f"uid-{name}", "resourceVersion": str(rv or next(RESOURCE_VERSIONS)),
        "creationTimestamp": "2025-01-01T11:59:00Z", "generation": 1,
        "labels": {"app.kubernetes.io/managed-by": "finetune-operator", "app.kubernetes.io/name": "finetune-trainer",
                   "finetune.io/job": owner, "finetune.io/attempt": str(attempt),
                   "batch.kubernetes.io/controller-uid": "c0ffee",
                   "batch.kubernetes.io/job-name": f"{owner}-a{attempt}"},
        "ownerReferences": [{"apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob", "name": owner,
                             "uid": f"uid-{owner}", "controller": True, "blockOwnerDeletion": True}],
        "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "fieldsType": "FieldsV1",
                           "fieldsV1": {"f:status": {"f:active": {}, "f:ready": {}}}}] * 4,
        **extra,
    }


def job(owner: str = "mrpc", attempt: int = 1, complete: bool = False, failed: str | None = None,
        suspend: bool = False, parallelism: int = 1, rv: int | None = None, uid: str | None = None,
        active: int = 1) -> dict[str, Any]:
    conditions = []
    if complete:
        conditions += [{"type": "SuccessCriteriaMet", "status": "True", "lastProbeTime": "2025-01-01T12:00:00Z"},
                       {"type": "Complete", "status": "True", "lastTransitionTime": "2025-01-01T12:00:00Z"}]
    if failed:
        conditions.append({"type": "Failed", "status": "True", "reason": failed, "message": f"Job {failed}",
                           "lastTransitionTime": "2025-01-01T12:00:00Z"})
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": _meta(f"{owner}-a{attempt}", owner, attempt, rv, uid),
        "spec": {"parallelism": parallelism, "completions": parallelism, "suspend": suspend, "backoffLimit": 0,
                 "template": {"spec": {"containers": [{"name": "trainer", "image": "img", "args": ["x"] * 20}]}}},
        "status": {"conditions": conditions, "active": active, "ready": active, "startTime": "2025-01-01T11:59:00Z",
                   "uncountedTerminatedPods": {}},
    }


def pod(owner: str = "mrpc", attempt: int = 1, index: int = 0, phase: str = "Running", ready: bool = True,
        state: dict | None = None, rv: int | None = None, uid: str | None = None, reason: str | None = None,
        scheduled: dict | None = None, heartbeat: str = "2025-01-01T12:00:00Z") -> dict[str, Any]:
    name = f"{owner}-a{attempt}-{index}-xyz"
    conditions = [{"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": heartbeat},
                  scheduled or {"type": "PodScheduled", "status": "True", "lastTransitionTime": heartbeat},
                  {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": heartbeat}]
    status = {"phase": phase, "podIP": "10.0.0.5", "hostIP": "10.1.0.1", "startTime": heartbeat,
              "qosClass": "Burstable", "conditions": conditions,
              "containerStatuses": [{"name": "trainer", "image": "img", "imageID": "sha", "ready": ready,
                                     "restartCount": 0, "started": True, "containerID": "c://1",
                                     "state": state or {"running": {"startedAt": "2025-01-01T11:59:00Z"}}}]}
    if reason:
        status.update(reason=reason, message=f"The node was low on resource: memory. ({reason})")
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": _meta(name, owner, attempt, rv, uid, annotations={
            "batch.kubernetes.io/job-completion-index": str(index), "kubectl.kubernetes.io/default-container": "t"}),
        "spec": {"containers": [{"name": "trainer", "image": "img", "env": [{"name": "A", "value": "b"}] * 10,
                                 "resources": {"requests": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"},
                                               "limits": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}}}],
                 "nodeName": "kwok-node-0"},
        "status": status,
    }


def terminated(code: int, message: str = "", reason: str | None = None) -> dict:
    return {"terminated": {"exitCode": code, "reason": reason or ("Completed" if code == 0 else "Error"),
                           "message": message, "finishedAt": "2025-01-01T12:00:00Z",
                           "startedAt": "2025-01-01T11:59:00Z", "containerID": "c://1"}}


SUMMARY = json.dumps({"phase": "Succeeded", "exitCode": 0, "metrics": {"trainLoss": 0.3},
                      "output": {"location": "pvc://ckpt/run"}, "progress": {"step": 9, "totalSteps": 9}})



def synced(*objects) -> Children:
    """A store whose watches have listed ``objects`` (every namespace)."""
    children = Children()
    for kind in ("Job", "Pod"):
        children.replace((kind, None), [o for o in objects if o["kind"] == kind], children.mark())
    return children
