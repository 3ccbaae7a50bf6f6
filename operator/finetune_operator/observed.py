"""What the operator sees of a FineTuneJob in the cluster, as plain values the lifecycle can decide on.

The gatherer (reconciler.py) reads the FineTuneJob, its attempts' Jobs and their pods, the latest scraped
trainer metrics and, for a queued job, the Kueue Workload of its current Job (kueue.py); the functions here turn
those raw API objects into the frozen dataclasses below. They are pure, so the lifecycle's tests build an
``Observed`` from literal dicts without a cluster.

``trim_job`` and ``trim_pod`` cut a Job or pod down to the fields read here, for the in-memory store of children
(children.py): they live next to the readers so that a new field read here is not forgotten there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from finetune_operator.api import FineTuneJob, FineTuneJobStatus
from finetune_operator.kueue import Queueing, job_uid, observe_workload
from finetune_operator.manifest import describe_validation_error
from finetune_operator.summary import read_summary
from finetune_operator.names import COMPLETION_INDEX_ANNOTATION, CONTAINER, LABEL_ATTEMPT, LABEL_FINETUNEJOB

# Pod-level reasons (pod.status.reason) of pods that were stopped from outside: a new attempt can succeed.
DISRUPTED_POD_REASONS = frozenset({
    "Evicted", "Preempted", "Preempting", "NodeLost", "Shutdown", "NodeShutdown", "Terminated",
    "UnexpectedAdmissionError",
})
# Container waiting reasons of a normal start: not reported (nor kept by trim_pod).
_NORMAL_WAITING = (None, "ContainerCreating", "PodInitializing")


@dataclass(frozen=True)
class Terminated:
    """The trainer container's last termination."""

    exit_code: int
    reason: str = ""  # the runtime's: Completed, Error, OOMKilled, ...
    message: str = ""  # the termination message: the trainer's JSON summary, or the log tail
    started_at: str = ""
    finished_at: str = ""

    @property
    def summary(self) -> dict[str, Any] | None:
        """The trainer's exit summary, when the termination message is one (not a log tail), reduced to the parts
        that have the trainer's schema (summary.read_summary: a custom image can leave any JSON there). Read once,
        here: everything downstream (lifecycle, status) takes it as read."""
        try:
            summary = json.loads(self.message)
        except ValueError:
            return None
        return read_summary(summary) if isinstance(summary, dict) else None


@dataclass(frozen=True)
class Waiting:
    """Why a pod does not run yet, in the words of the scheduler or the kubelet."""

    reason: str  # Unschedulable, ErrImagePull, ImagePullBackOff, CreateContainerConfigError, ...
    message: str = ""
    scheduled: bool = True  # False: no node was found for it (the scheduler's reason), else the kubelet's


@dataclass(frozen=True)
class ObservedPod:
    name: str
    phase: str = "Pending"
    index: int = 0  # completion index (rank of the node); 0 for single-node jobs
    ip: str | None = None  # while Running: where its metrics are read (an IP assigned earlier is not used yet)
    ready: bool = False
    terminated: Terminated | None = None
    disruption: str | None = None  # why the pod was stopped from outside (DisruptionTarget, eviction, ...)
    waiting: Waiting | None = None  # why it does not run yet (none while it starts normally)
    started_at: str = ""  # when the trainer container started (running or since terminated): usage's clock
    requests: dict[str, str] = field(default_factory=dict)  # the trainer container's requests (limits where unset)


@dataclass(frozen=True)
class ObservedAttempt:
    number: int
    parallelism: int = 1
    suspended: bool = False
    complete: bool = False
    failed: bool = False
    failure_reason: str = ""  # the Job's Failed condition: DeadlineExceeded, PodFailurePolicy, BackoffLimitExceeded
    failure_message: str = ""
    pods: tuple[ObservedPod, ...] = ()
    queueing: Queueing | None = None  # Kueue's Workload for this Job (queued jobs; None until Kueue made one)
    created: str | None = None  # the Job's creationTimestamp: the start of a job whose creating pass wrote no status

    @property
    def finished(self) -> bool:
        return self.complete or self.failed

    @property
    def rank0(self) -> ObservedPod | None:
        """The pod that reports for the attempt: rank 0 serves the metrics and writes the summary."""
        return next((p for p in self.pods if p.index == 0), None)


@dataclass(frozen=True)
class Policy:
    """The operator's settings the rules and status read (the reconciler builds it from settings.Settings)."""

    stalled_after_seconds: float | None = None  # a Running job whose step has not moved this long is Stalled
    gpu_resource: str = "nvidia.com/gpu"  # for jobs that do not name spec.resources.gpuResource
    prices: Any = None  # pricing.Prices of status.usage.estimatedCost, or None


@dataclass(frozen=True)
class Observed:
    """Everything one reconcile of a FineTuneJob decides on."""

    name: str
    namespace: str
    generation: int
    now: datetime
    ftj: FineTuneJob | None  # None when the stored object does not parse (see spec_error)
    status: FineTuneJobStatus = field(default_factory=FineTuneJobStatus)
    attempts: tuple[ObservedAttempt, ...] = ()  # ordered by number
    scraped: dict[str, Any] | None = None  # {"progress": {...}, "metrics": {...}} from rank 0's endpoint
    spec_error: str = ""
    policy: Policy = field(default_factory=lambda: Policy())

    @property
    def current(self) -> ObservedAttempt | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def recorded_reason(self) -> tuple[str, str]:
        """(reason, message) the status holds now: the Ready condition's, which always carries the latest."""
        for cond in self.status.conditions or []:
            if cond.type == "Ready":
                return cond.reason, cond.message
        return str(self.status.phase), ""


# ---------------------------------------------------------------------------------------------- parsing

def _condition(obj: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype and cond.get("status") == "True":
            return cond
    return None


def _terminated(pod: dict[str, Any]) -> Terminated | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        state = (status.get("state") or {}).get("terminated")
        if status.get("name") == CONTAINER and state:
            return Terminated(
                exit_code=int(state.get("exitCode", 0)),
                reason=state.get("reason") or "",
                message=(state.get("message") or "").strip(),
                started_at=state.get("startedAt") or "",
                finished_at=state.get("finishedAt") or "",
            )
    return None


def _trainer_status(pod: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in (pod.get("status") or {}).get("containerStatuses") or [] if c.get("name") == CONTAINER),
                {})


def _started_at(pod: dict[str, Any]) -> str:
    state = _trainer_status(pod).get("state") or {}
    return ((state.get("running") or state.get("terminated") or {}).get("startedAt")) or ""


def _requests(pod: dict[str, Any]) -> dict[str, str]:
    container = next((c for c in (pod.get("spec") or {}).get("containers") or [] if c.get("name") == CONTAINER), {})
    resources = container.get("resources") or {}
    # An extended resource (GPUs) may be given as a limit only; the request then equals it.
    return {k: str(v) for k, v in {**(resources.get("limits") or {}), **(resources.get("requests") or {})}.items()}


def _disruption(pod: dict[str, Any]) -> str | None:
    target = _condition(pod, "DisruptionTarget")
    if target:
        return f"{target.get('reason') or 'DisruptionTarget'}: {target.get('message') or 'pod disrupted'}"
    status = pod.get("status") or {}
    if status.get("reason") in DISRUPTED_POD_REASONS:
        return f"{status['reason']}: {status.get('message') or 'pod stopped by the node'}"
    return None


def _waiting(pod: dict[str, Any]) -> Waiting | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return Waiting(cond.get("reason") or "Unschedulable", cond.get("message") or "not scheduled yet",
                           scheduled=False)
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (status.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") not in _NORMAL_WAITING:
            return Waiting(waiting["reason"], waiting.get("message") or "")
    return None


def observe_pod(pod: dict[str, Any]) -> ObservedPod:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    ready = _condition(pod, "Ready") is not None
    phase = status.get("phase") or "Pending"
    return ObservedPod(
        name=meta.get("name", ""),
        phase=phase,
        index=int((meta.get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION, 0)),
        ip=status.get("podIP") if phase == "Running" else None,
        ready=ready,
        terminated=_terminated(pod),
        disruption=_disruption(pod),
        waiting=None if ready else _waiting(pod),
        started_at=_started_at(pod),
        requests=_requests(pod),
    )


def attempt_number(obj: dict[str, Any]) -> int:
    return int(((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_ATTEMPT, 0))


def observe_attempt(job: dict[str, Any], pods: list[dict[str, Any]],
                    workloads: list[dict[str, Any]] = ()) -> ObservedAttempt:
    """One attempt from its batch/v1 Job, the pods labelled with its number and Kueue's Workload for the Job."""
    number = attempt_number(job)
    spec = job.get("spec") or {}
    failed = _condition(job, "Failed")
    uid = (job.get("metadata") or {}).get("uid")
    workload = next((w for w in workloads if uid and job_uid(w) == uid), None)
    return ObservedAttempt(
        number=number,
        parallelism=int(spec.get("parallelism", 1)),
        suspended=bool(spec.get("suspend")),
        complete=_condition(job, "Complete") is not None,
        failed=failed is not None,
        failure_reason=(failed or {}).get("reason") or "",
        failure_message=(failed or {}).get("message") or "",
        pods=tuple(sorted((observe_pod(p) for p in pods if attempt_number(p) == number),
                          key=lambda p: (p.index, p.name))),
        queueing=observe_workload(workload) if workload else None,
        created=(job.get("metadata") or {}).get("creationTimestamp"),
    )


def observe(ftj: dict[str, Any], jobs: list[dict[str, Any]], pods: list[dict[str, Any]], now: datetime,
            scraped: dict[str, Any] | None = None, workloads: list[dict[str, Any]] = ()) -> Observed:
    meta = ftj.get("metadata") or {}
    try:
        parsed, spec_error = FineTuneJob.model_validate(ftj), ""
    except ValidationError as error:
        # The CRD admitted it, so the CRD and this operator disagree (e.g. a newer CRD): report, do not crash.
        parsed, spec_error = None, describe_validation_error(error)
    try:
        status = FineTuneJobStatus.model_validate(ftj.get("status") or {})
    except ValidationError:
        status = FineTuneJobStatus()  # written by someone else; the next status patch replaces it
    attempts = sorted((observe_attempt(j, pods, workloads) for j in jobs), key=lambda a: a.number)
    return Observed(
        name=meta.get("name", ""),
        namespace=meta.get("namespace", ""),
        generation=int(meta.get("generation", 0)),
        now=now,
        ftj=parsed,
        status=status,
        attempts=tuple(a for a in attempts if a.number > 0),
        scraped=scraped,
        spec_error=spec_error,
    )


# ---------------------------------------------------------------------------------------------- trimming
# What children.py keeps of each Job and pod: exactly what the functions above read, in the form they read it,
# plus the name, namespace and finetune.io/job label the store files it under (uid and resourceVersion are kept
# beside the copy). Two reasons. Size: a full pod is ~5-10 KiB of JSON (managed fields, the whole spec), the
# trimmed one a few hundred bytes. And a trimmed copy changes only when what is observed may change, so the store
# can tell which watch events need a pass: a pod's heartbeat timestamps, its PodScheduled=True or
# ContainersReady, a Job's active/ready counters or SuccessCriteriaMet need none. The tests check that observe()
# gives the same answer on trimmed and full objects; a new field read above must be kept here.

# The conditions read above, in the state in which they are read (_condition: True; _waiting: PodScheduled False).
# In any other state a condition reads as absent, so it is left out.
_READ_CONDITIONS = {"Complete": "True", "Failed": "True", "Ready": "True", "DisruptionTarget": "True",
                    "PodScheduled": "False"}


def _trim_conditions(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: c[k] for k in ("type", "status", "reason", "message") if c.get(k) is not None}
            for c in (obj.get("status") or {}).get("conditions") or []
            if _READ_CONDITIONS.get(c.get("type")) == c.get("status")]


def _trim_container(status: dict[str, Any]) -> dict[str, Any] | None:
    state = status.get("state") or {}
    if state.get("terminated") is not None:
        keep = ("exitCode", "reason", "message", "startedAt", "finishedAt")
        return {"name": status.get("name"),
                "state": {"terminated": {k: v for k, v in state["terminated"].items() if k in keep}}}
    waiting = state.get("waiting") or {}
    if waiting.get("reason") not in _NORMAL_WAITING:
        return {"name": status.get("name"),
                "state": {"waiting": {k: v for k, v in waiting.items() if k in ("reason", "message")}}}
    if (state.get("running") or {}).get("startedAt"):  # usage counts from here
        return {"name": status.get("name"), "state": {"running": {"startedAt": state["running"]["startedAt"]}}}
    return None  # starting normally: nothing above reads it


def _trim_metadata(obj: dict[str, Any], annotations: tuple[str, ...] = ()) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    # The uid names a Job's Kueue Workload (observe_attempt); it never changes, so it triggers no pass.
    out = {k: meta[k] for k in ("name", "namespace", "uid") if k in meta}
    out["labels"] = {k: labels[k] for k in (LABEL_FINETUNEJOB, LABEL_ATTEMPT) if k in labels}
    kept = {k: v for k, v in (meta.get("annotations") or {}).items() if k in annotations}
    if kept:
        out["annotations"] = kept
    return out


def trim_job(job: dict[str, Any]) -> dict[str, Any]:
    """A batch/v1 Job cut down to what ``observe_attempt`` reads (and the store's identity fields)."""
    spec = job.get("spec") or {}
    created = (job.get("metadata") or {}).get("creationTimestamp")
    return {
        "metadata": {**_trim_metadata(job), **({"creationTimestamp": created} if created else {})},
        "spec": {k: spec[k] for k in ("parallelism", "suspend") if k in spec},
        "status": {"conditions": _trim_conditions(job)},
    }


def trim_pod(pod: dict[str, Any]) -> dict[str, Any]:
    """A pod cut down to what ``observe_pod`` reads (and the store's identity fields)."""
    status = pod.get("status") or {}
    trimmed = {k: status[k] for k in ("phase", "reason", "message") if status.get(k) is not None}
    if status.get("phase") == "Running" and status.get("podIP"):
        trimmed["podIP"] = status["podIP"]  # read while Running only (observe_pod): an IP given earlier is no news
    trimmed["conditions"] = _trim_conditions(pod)
    trimmed["containerStatuses"] = [c for c in map(_trim_container, status.get("containerStatuses") or []) if c]
    containers = [{"name": c.get("name"), "resources": c["resources"]}
                  for c in (pod.get("spec") or {}).get("containers") or [] if c.get("name") == CONTAINER
                  and c.get("resources")]
    return {"metadata": _trim_metadata(pod, (COMPLETION_INDEX_ANNOTATION,)), "spec": {"containers": containers},
            "status": trimmed}
