"""The FineTuneJob state machine: from what is observed, decide (phase, reason, message, action).

Modelled on cert-manager's controllers: a chain of pure rules, each either decides or passes to the next; the
first decision wins. The reconciler carries out the decision's action and writes the status ``next_status``
computes. Nothing here does I/O, reads a clock or keeps state, so every path is a unit test.

Phases: Pending -> Running -> Succeeded | Failed, and Suspended. A failed attempt whose failure a retry can fix
(the trainer's retryable exit code, a disruption, a crash from outside) becomes the next attempt, which resumes
from the checkpoint, until runPolicy.backoffLimit retries are spent; a permanent failure (the trainer's permanent
exit code, OOMKilled, the deadline) ends the job at once with the trainer's reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Union

from finetune_operator.api import Phase
from finetune_operator.observed import Observed, ObservedAttempt, ObservedPod
from finetune_operator.render import attempt_name
from finetune_operator.status import status_from_summary
from finetune_trainer.config import EXIT_PERMANENT

# Condition types. Ready is the summary condition (True once the job succeeded) and always carries the latest
# reason and message, so `kubectl wait --for=condition=Ready` and dashboards need to look at one place only.
CONDITION_TYPES = ("Ready", "Running", "Succeeded", "Failed", "Suspended")
_TRUE_IN = {"Ready": Phase.SUCCEEDED, "Running": Phase.RUNNING, "Succeeded": Phase.SUCCEEDED,
            "Failed": Phase.FAILED, "Suspended": Phase.SUSPENDED}
TERMINAL = (Phase.SUCCEEDED.value, Phase.FAILED.value)

# Reasons the operator itself gives; permanent trainer failures carry the trainer's own reason instead.
ATTEMPT_CREATED = "AttemptCreated"
WAITING_FOR_PODS = "WaitingForPods"
TRAINER_RUNNING = "TrainerRunning"
TRAINING_SUCCEEDED = "TrainingSucceeded"
RETRYING = "Retrying"
BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
DEADLINE_EXCEEDED = "DeadlineExceeded"
SUSPENDED = "Suspended"
RESUMED = "Resumed"
QUEUED = "Queued"
INVALID_SPEC = "InvalidSpec"
OUT_OF_MEMORY = "OutOfMemory"
TRAINER_FAILED = "TrainerFailed"  # permanent exit without a summary to name the reason
TRAINER_EXITED = "TrainerExited"  # any other non-zero exit: retried, as a Job would
POD_DISRUPTED = "PodDisrupted"
# Why a pod of the attempt does not run, in three kinds a user acts on differently.
UNSCHEDULABLE = "Unschedulable"
IMAGE_PULL_FAILED = "ImagePullFailed"
CONTAINER_CANNOT_START = "ContainerCannotStart"

WARNING_REASONS = frozenset({RETRYING, UNSCHEDULABLE, IMAGE_PULL_FAILED, CONTAINER_CANNOT_START})
# The kubelet's container waiting reasons that mean the image cannot be had; any other reason it reports (other than
# a normal start) means the container cannot be created or started (CreateContainerConfigError: a Secret is
# missing, CreateContainerError, RunContainerError, ...).
IMAGE_WAITING_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName",
                                   "RegistryUnavailable", "SignatureValidationFailed"})


# ---------------------------------------------------------------------------------------------- decisions

@dataclass(frozen=True)
class CreateAttempt:
    number: int
    suspend: bool = False  # created suspended: the job is suspended, or Kueue admits it (queueName)
    active_deadline_seconds: int | None = None  # what is left of runPolicy.activeDeadlineSeconds


@dataclass(frozen=True)
class SuspendAttempt:
    number: int


@dataclass(frozen=True)
class ResumeAttempt:
    number: int


@dataclass(frozen=True)
class DeleteFineTuneJob:
    """runPolicy.ttlSecondsAfterFinished has passed; the children go with it (owner references)."""


Action = Union[CreateAttempt, SuspendAttempt, ResumeAttempt, DeleteFineTuneJob, None]


@dataclass(frozen=True)
class Decision:
    phase: Phase
    reason: str
    message: str
    action: Action = None
    summary: dict[str, Any] | None = None  # the trainer's exit summary, which settles metrics and locations


@dataclass(frozen=True)
class Failure:
    """Why an attempt failed, and whether another attempt can help."""

    retryable: bool
    reason: str
    message: str
    summary: dict[str, Any] | None = None


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def format_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------- failures

def _pod_failure(pod: ObservedPod) -> Failure:
    term = pod.terminated
    summary = term.summary if term else None
    if term and term.reason == "OOMKilled":
        return Failure(False, OUT_OF_MEMORY,
                       f"pod {pod.name} was killed for exceeding its memory limit (spec.resources.memory)", summary)
    if summary and summary.get("reason"):
        field = summary.get("field")
        text = str(summary.get("message") or "").removeprefix(f"{field}: ")  # the trainer's own "field: " prefix
        message = f"spec.{field}: {text}" if field and not text.startswith(f"spec.{field}") else text
        return Failure(term.exit_code != EXIT_PERMANENT, summary["reason"], message, summary)
    if pod.disruption and not (term and term.exit_code == EXIT_PERMANENT):
        return Failure(True, POD_DISRUPTED, f"pod {pod.name}: {pod.disruption}")
    if term is None:
        return Failure(True, POD_DISRUPTED, f"pod {pod.name} failed without running the trainer to its end")
    tail = f": {term.message}" if term.message else ""
    if term.exit_code == EXIT_PERMANENT:
        return Failure(False, TRAINER_FAILED, f"pod {pod.name} exited with code {term.exit_code}{tail}")
    return Failure(True, TRAINER_EXITED, f"pod {pod.name} exited with code {term.exit_code}{tail}")


def _failed_first(pod: ObservedPod) -> tuple[bool, str, int]:
    # A permanent failure anywhere decides (a retry would meet it again); otherwise the earliest failure is the
    # cause: when one rank fails, the Job controller stops the others, which then exit as interrupted.
    permanent = bool(pod.terminated and (pod.terminated.exit_code == EXIT_PERMANENT
                                         or pod.terminated.reason == "OOMKilled"))
    finished = pod.terminated.finished_at if pod.terminated else ""
    return (not permanent, finished or "~", pod.index)


def classify_failure(attempt: ObservedAttempt) -> Failure:
    if attempt.failure_reason == DEADLINE_EXCEEDED:
        return Failure(False, DEADLINE_EXCEEDED,
                       f"attempt {attempt.number} ran past spec.runPolicy.activeDeadlineSeconds")
    failed = [p for p in attempt.pods
              if p.disruption or p.phase == "Failed" or (p.terminated and p.terminated.exit_code != 0)]
    if failed:
        return _pod_failure(min(failed, key=_failed_first))
    # The pods are gone: the Job's condition is all that is left.
    detail = attempt.failure_message or "its pods are gone"
    if attempt.failure_reason == "PodFailurePolicy":  # our only rule: the trainer's permanent exit code
        return Failure(False, TRAINER_FAILED, detail)
    return Failure(True, attempt.failure_reason or TRAINER_EXITED, detail)


# ---------------------------------------------------------------------------------------------- rules

def _elapsed(o: Observed) -> float | None:
    return (o.now - parse_time(o.status.start_time)).total_seconds() if o.status.start_time else None


def _remaining_deadline(o: Observed) -> int | None:
    deadline = o.job.spec.run_policy.active_deadline_seconds
    if deadline is None:
        return None
    return max(1, int(deadline - (_elapsed(o) or 0)))


def _create(o: Observed, number: int) -> CreateAttempt:
    spec = o.job.spec
    return CreateAttempt(number, suspend=spec.run_policy.suspend or bool(spec.queue_name),
                         active_deadline_seconds=_remaining_deadline(o))


def _previous_reason(o: Observed) -> tuple[str, str]:
    for cond in o.status.conditions or []:
        if cond.type == "Ready":
            return cond.reason, cond.message
    return str(o.status.phase), ""


def finished(o: Observed) -> Decision | None:
    """A finished job stays finished: later changes to its children do not reopen it."""
    if o.status.phase not in TERMINAL:
        return None
    reason, message = _previous_reason(o)
    ttl = o.job.spec.run_policy.ttl_seconds_after_finished if o.job else None
    expired = (ttl is not None and o.status.completion_time is not None
               and o.now >= parse_time(o.status.completion_time) + timedelta(seconds=ttl))
    return Decision(Phase(o.status.phase), reason, message, DeleteFineTuneJob() if expired else None)


def invalid_spec(o: Observed) -> Decision | None:
    if o.job is not None:
        return None
    return Decision(Phase.FAILED, INVALID_SPEC, o.spec_error)


def deadline_exceeded(o: Observed) -> Decision | None:
    # As on a Job, the clock stops while the job is suspended and restarts from zero when it resumes.
    deadline = o.job.spec.run_policy.active_deadline_seconds
    elapsed = _elapsed(o)
    paused = o.job.spec.run_policy.suspend or (o.current is not None and o.current.suspended)
    if deadline is None or elapsed is None or elapsed < deadline or paused:
        return None
    current = o.current
    running = current is not None and not current.finished
    return Decision(Phase.FAILED, DEADLINE_EXCEEDED,
                    f"the job ran longer than spec.runPolicy.activeDeadlineSeconds ({deadline}s)",
                    SuspendAttempt(current.number) if running else None)


def no_attempt(o: Observed) -> Decision | None:
    if o.current is not None:
        return None
    # status.attempts without a Job: someone deleted the attempt's Job; recreate that attempt, do not count anew.
    number = o.status.attempts or 1
    action = _create(o, number)
    spec = o.job.spec
    message = f"created attempt {number} (Job {attempt_name(o.name, number)})"
    if spec.run_policy.suspend:
        message += ", suspended (spec.runPolicy.suspend)"
    elif spec.queue_name:
        message += f", queued in Kueue LocalQueue {spec.queue_name}"
    if not spec.output.location:
        message += "; spec.output.location is unset, so checkpoints stay in the pod and a retry starts over"
    if spec.run_policy.suspend:
        return Decision(Phase.SUSPENDED, SUSPENDED, message, action)
    return Decision(Phase.PENDING, ATTEMPT_CREATED, message, action)


def _rank0_summary(attempt: ObservedAttempt) -> dict[str, Any] | None:
    rank0 = attempt.rank0
    return rank0.terminated.summary if rank0 and rank0.terminated else None


def succeeded(o: Observed) -> Decision | None:
    current = o.current
    if not current.complete:
        return None
    summary = _rank0_summary(current)
    message = f"attempt {current.number} completed"
    output = ((summary or {}).get("output") or {}).get("location")
    if output:
        message += f"; the model is at {output}"
    return Decision(Phase.SUCCEEDED, TRAINING_SUCCEEDED, message, summary=summary)


def failed(o: Observed) -> Decision | None:
    current = o.current
    if not current.failed:
        return None
    failure = classify_failure(current)
    if not failure.retryable:
        return Decision(Phase.FAILED, failure.reason, failure.message, summary=failure.summary)
    limit = o.job.spec.run_policy.backoff_limit
    what = f"attempt {current.number} failed ({failure.reason}: {failure.message})"
    if current.number > limit:
        return Decision(Phase.FAILED, BACKOFF_LIMIT_EXCEEDED,
                        f"{what}; no retries left (spec.runPolicy.backoffLimit: {limit})", summary=failure.summary)
    number = current.number + 1
    return Decision(Phase.PENDING, RETRYING,
                    f"{what}; starting attempt {number} of {limit + 1}, which resumes from the last checkpoint",
                    _create(o, number), summary=failure.summary)


def suspended(o: Observed) -> Decision | None:
    if not o.job.spec.run_policy.suspend:
        return None
    current = o.current
    if current.suspended:
        return Decision(Phase.SUSPENDED, SUSPENDED,
                        f"attempt {current.number} is suspended (spec.runPolicy.suspend); set it to false to resume "
                        "from the last checkpoint")
    return Decision(Phase.SUSPENDED, SUSPENDED,
                    f"suspending attempt {current.number}: its pods stop after saving a checkpoint",
                    SuspendAttempt(current.number))


def resumed(o: Observed) -> Decision | None:
    current = o.current
    if not current.suspended:
        return None
    queue = o.job.spec.queue_name
    if queue:
        # Kueue owns a queued Job's suspend flag: it unsuspends the Job when it admits it.
        return Decision(Phase.PENDING, QUEUED, f"attempt {current.number} waits for Kueue to admit it "
                                               f"(LocalQueue {queue})")
    return Decision(Phase.PENDING, RESUMED, f"resuming attempt {current.number} from the last checkpoint",
                    ResumeAttempt(current.number))


def _why_waiting(pod: ObservedPod) -> tuple[str, str]:
    """(reason, message) for a pod that does not run: what the scheduler or kubelet said, and what to check."""
    w = pod.waiting
    said = f"{w.reason}: {w.message}" if w.message else w.reason
    if not w.scheduled:
        return UNSCHEDULABLE, (f"pod {pod.name} cannot be scheduled ({said}); it waits for a node that fits "
                               "spec.resources (gpus, cpu, memory, nodeSelector, tolerations) and for its volumes")
    if w.reason in IMAGE_WAITING_REASONS:
        return IMAGE_PULL_FAILED, (f"pod {pod.name} cannot get its image ({said}); check spec.image or the "
                                   "operator's trainer image, and that the node can pull it")
    return CONTAINER_CANNOT_START, (f"pod {pod.name} cannot start the trainer ({said}); check what it names: "
                                    "secretRef Secrets, volumes, the image's command")


def active(o: Observed) -> Decision:
    current = o.current
    started = sum(1 for p in current.pods if p.ready or p.terminated)
    if started >= current.parallelism:
        return Decision(Phase.RUNNING, TRAINER_RUNNING,
                        f"attempt {current.number}: {current.parallelism}/{current.parallelism} trainer pods running")
    message = f"attempt {current.number}: {started}/{current.parallelism} trainer pods running"
    stuck = next((p for p in current.pods if p.waiting), None)
    if stuck is None:
        return Decision(Phase.PENDING, WAITING_FOR_PODS, message)
    # Its own reason, so the change is an Event (transition_event) and `kubectl get ftj` can say why it waits.
    reason, why = _why_waiting(stuck)
    return Decision(Phase.PENDING, reason, f"{message}; {why}")


# Order matters: each rule may assume the ones before it passed (e.g. a parsed spec, an existing attempt).
RULES: tuple[Callable[[Observed], Decision | None], ...] = (
    finished, invalid_spec, deadline_exceeded, no_attempt, succeeded, failed, suspended, resumed, active,
)


def decide(o: Observed) -> Decision:
    for rule in RULES:
        decision = rule(o)
        if decision is not None:
            return decision
    raise AssertionError("the last rule always decides")


# ---------------------------------------------------------------------------------------------- status

def _conditions(o: Observed, d: Decision) -> list[dict[str, Any]]:
    previous = {c.type: c for c in o.status.conditions or []}
    now = format_time(o.now)
    conditions = []
    for ctype in CONDITION_TYPES:
        status = "True" if d.phase == _TRUE_IN[ctype] else "False"
        old = previous.get(ctype)
        conditions.append({
            "type": ctype,
            "status": status,
            "reason": d.reason,
            "message": d.message,
            # The time the status flipped, not the time the message last changed.
            "lastTransitionTime": old.last_transition_time if old and old.status == status else now,
            "observedGeneration": o.generation,
        })
    return conditions


def next_status(o: Observed, d: Decision) -> dict[str, Any]:
    """The whole status after this decision, in wire form (camelCase)."""
    status = o.status.wire()
    if isinstance(d.action, CreateAttempt):
        status["attempts"] = d.action.number
        status.setdefault("startTime", format_time(o.now))
    elif o.current:
        status["attempts"] = o.current.number
    if isinstance(d.action, ResumeAttempt):
        status["startTime"] = format_time(o.now)  # restarts the deadline's clock, as a resumed Job does
    if o.scraped and d.phase == Phase.RUNNING:
        status["progress"] = o.scraped.get("progress") or status.get("progress")
        status["parameters"] = o.scraped.get("parameters") or status.get("parameters")
        status["metrics"] = {**status.get("metrics", {}), **(o.scraped.get("metrics") or {})}
    if d.summary:
        settled = status_from_summary(d.summary).wire()
        for key in ("progress", "parameters", "checkpoint", "output"):
            if key in settled:
                status[key] = settled[key]
        status["metrics"] = {**status.get("metrics", {}), **settled.get("metrics", {})}
    if d.phase.value in TERMINAL:
        status.setdefault("completionTime", format_time(o.now))
    status.update(phase=d.phase.value, conditions=_conditions(o, d), observedGeneration=o.generation)
    return {k: v for k, v in status.items() if v not in (None, {})}


def transition_event(o: Observed, d: Decision) -> tuple[str, str, str] | None:
    """(type, reason, message) of the Event for this decision, or None when nothing changed."""
    if (o.status.phase, _previous_reason(o)[0]) == (d.phase.value, d.reason):
        return None
    warning = d.phase == Phase.FAILED or d.reason in WARNING_REASONS
    return ("Warning" if warning else "Normal", d.reason, d.message)
