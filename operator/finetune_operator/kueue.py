"""What Kueue says about an attempt: the Workload Kueue made for the attempt's Job, read into a plain value.

Why a module of its own: a FineTuneJob with spec.queueName hands its Jobs to Kueue (render.py labels them with the
LocalQueue and creates them suspended), and from then on Kueue, not the operator, decides when a Job runs: it
admits a Job by unsuspending it, and preempts it by suspending it again. The Job itself only shows ``suspend``;
why it waits, or why it was stopped, is in the Workload Kueue created for it (kueue.x-k8s.io/v1beta2), which
Kueue labels with the Job's uid. The reconciler reads that Workload (kube.list_workloads) while a queued attempt
is not finished; observed.py attaches the value below to the attempt and lifecycle.queued words the status.

Kueue's Workload conditions read here (v0.17): QuotaReserved (False while pending, with the scheduler's message,
e.g. "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor gpu, 1 more
needed"), Admitted, and Evicted (True once Kueue took the admission back: reason Preempted, PodsReadyTimeout,
InactiveWorkload, ...; set while the Workload is still admitted, as Kueue starts stopping the Job, and reset to
False when Kueue reserves quota for it again).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GROUP_VERSION = "kueue.x-k8s.io/v1beta2"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"  # on the Job: which LocalQueue it waits in
LABEL_JOB_UID = "kueue.x-k8s.io/job-uid"  # on the Workload: the uid of the Job it stands for
EVICTED_BY_PREEMPTION = "Preempted"


def workloads_path(namespace: str) -> str:
    return f"/apis/{GROUP_VERSION}/namespaces/{namespace}/workloads"


@dataclass(frozen=True)
class Queueing:
    """Kueue's view of one attempt's Job, from its Workload."""

    workload: str
    admitted: bool = False
    message: str = ""  # why it waits: the message of QuotaReserved (False), or of Admitted while checks run
    evicted_reason: str = ""  # Evicted (True): why Kueue took the admission back (Preempted, ...)
    evicted_message: str = ""
    priority: int | None = None  # the priority Kueue orders and preempts by (from the Job's priority class)

    @property
    def evicted(self) -> bool:
        return bool(self.evicted_reason)


def _conditions(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type"): c for c in (workload.get("status") or {}).get("conditions") or []}


def observe_workload(workload: dict[str, Any]) -> Queueing:
    conditions = _conditions(workload)
    admitted = (conditions.get("Admitted") or {}).get("status") == "True"
    evicted = conditions.get("Evicted") or {}
    evicted = evicted if evicted.get("status") == "True" else {}
    reserved = conditions.get("QuotaReserved") or {}
    waiting = reserved if reserved.get("status") != "True" else conditions.get("Admitted") or {}
    priority = (workload.get("spec") or {}).get("priority")
    return Queueing(
        workload=(workload.get("metadata") or {}).get("name", ""),
        admitted=admitted,
        message="" if admitted else (waiting.get("message") or ""),
        evicted_reason=evicted.get("reason") or "",
        evicted_message=evicted.get("message") or "",
        priority=int(priority) if priority is not None else None,
    )


def job_uid(workload: dict[str, Any]) -> str:
    return ((workload.get("metadata") or {}).get("labels") or {}).get(LABEL_JOB_UID, "")
