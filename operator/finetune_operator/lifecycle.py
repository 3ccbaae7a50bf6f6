"""The FineTuneJob state machine: from what is observed, decide (phase, reason, message, action).

Modelled on cert-manager's controllers: a chain of pure rules, each either decides or passes to the next; the
first decision wins. The reconciler carries out the decision's action, writes the status status.next_status
computes from it and posts the Event events.transition_event names. Nothing here does I/O, reads a clock or keeps
state, so every path is a unit test.

Besides the phase, a decision may set conditions of their own: ``Stalled`` (a Running trainer whose step has not
moved for the operator's stalledAfterSeconds; the job keeps running, its reason becomes Stalled so a Warning Event
marks it) and ``EvaluationPassed`` (spec.evaluation's verdict, from the trainer's summary). A gate the final model
misses ends the job Failed with the trainer's reason GateFailed (a permanent exit: a retry would train the same
model), which a pipeline tells apart from a crash by that reason and the EvaluationPassed condition's.

Phases: Pending -> Running -> Succeeded | Failed, and Suspended. A job with spec.queueName waits in Pending while
Kueue holds its Job suspended (reason Queued, or Preempted/Evicted after Kueue stopped it), in Kueue's own words.
A failed attempt whose failure a retry can fix (the trainer's retryable exit code, a disruption, a crash from
outside) becomes the next attempt, which resumes from the checkpoint, until runPolicy.backoffLimit retries are
spent; a permanent failure (the trainer's permanent exit code, OOMKilled, the deadline) ends the job at once with
the trainer's reason (failures.py tells which).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Union

from finetune_operator.api import Phase, parse_time
from finetune_operator.conditions import STALLED, SetCondition, evaluation_condition, stall, was_stalled
from finetune_operator.failures import DEADLINE_EXCEEDED, classify_failure
from finetune_operator.kueue import EVICTED_BY_PREEMPTION
from finetune_operator.names import attempt_name
from finetune_operator.observed import Observed, ObservedAttempt, ObservedPod

TERMINAL = (Phase.SUCCEEDED.value, Phase.FAILED.value)

# Reasons the operator itself gives (failures.py has those of failed attempts); permanent trainer failures carry the
# trainer's own reason instead.
ATTEMPT_CREATED = "AttemptCreated"
WAITING_FOR_PODS = "WaitingForPods"
TRAINER_RUNNING = "TrainerRunning"
TRAINING_SUCCEEDED = "TrainingSucceeded"
RETRYING = "Retrying"
BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
SUSPENDED = "Suspended"
RESUMED = "Resumed"
QUEUED = "Queued"  # Kueue has not admitted the attempt's Job yet
PREEMPTED = "Preempted"  # Kueue preempted the running attempt (suspended its Job) for a higher-priority workload
EVICTED = "Evicted"  # Kueue took the admission back for another reason (its Evicted condition says which)
# The reasons of a transition that starts an attempt's pods, kept until a pod starts or is stuck (``active``).
STARTING = frozenset({ATTEMPT_CREATED, RETRYING, RESUMED})
# The reasons of a job whose Job waits for Kueue; status.py sets the Queued condition for them.
KUEUE_WAITING = frozenset({QUEUED, PREEMPTED, EVICTED})
INVALID_SPEC = "InvalidSpec"
# Why a pod of the attempt does not run, in three kinds a user acts on differently.
UNSCHEDULABLE = "Unschedulable"
IMAGE_PULL_FAILED = "ImagePullFailed"
CONTAINER_CANNOT_START = "ContainerCannotStart"

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
    conditions: tuple[SetCondition, ...] = ()


# ---------------------------------------------------------------------------------------------- rules

def _elapsed(o: Observed) -> float | None:
    return (o.now - parse_time(o.status.start_time)).total_seconds() if o.status.start_time else None


def _remaining_deadline(o: Observed) -> int | None:
    deadline = o.ftj.spec.run_policy.active_deadline_seconds
    if deadline is None:
        return None
    return max(1, int(deadline - (_elapsed(o) or 0)))


def _create(o: Observed, number: int) -> CreateAttempt:
    spec = o.ftj.spec
    return CreateAttempt(number, suspend=spec.run_policy.suspend or bool(spec.queue_name),
                         active_deadline_seconds=_remaining_deadline(o))


def finished(o: Observed) -> Decision | None:
    """A finished job stays finished: later changes to its children do not reopen it."""
    if o.status.phase not in TERMINAL:
        return None
    reason, message = o.recorded_reason
    ttl = o.ftj.spec.run_policy.ttl_seconds_after_finished if o.ftj else None
    expired = (ttl is not None and o.status.completion_time is not None
               and o.now >= parse_time(o.status.completion_time) + timedelta(seconds=ttl))
    return Decision(Phase(o.status.phase), reason, message, DeleteFineTuneJob() if expired else None)


def invalid_spec(o: Observed) -> Decision | None:
    if o.ftj is not None:
        return None
    return Decision(Phase.FAILED, INVALID_SPEC, o.spec_error)


def deadline_exceeded(o: Observed) -> Decision | None:
    # As on a Job, the clock stops while the job is suspended and restarts from zero when it resumes.
    deadline = o.ftj.spec.run_policy.active_deadline_seconds
    elapsed = _elapsed(o)
    paused = o.ftj.spec.run_policy.suspend or (o.current is not None and o.current.suspended)
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
    if o.ftj.spec.run_policy.suspend:
        return Decision(Phase.SUSPENDED, SUSPENDED, _created_message(o, number), action)
    return Decision(Phase.PENDING, ATTEMPT_CREATED, _created_message(o, number), action)


def _created_message(o: Observed, number: int) -> str:
    spec = o.ftj.spec
    message = f"created attempt {number} (Job {attempt_name(o.name, number)})"
    if spec.run_policy.suspend:
        message += ", suspended (spec.runPolicy.suspend)"
    elif spec.queue_name:
        message += f", queued in Kueue LocalQueue {spec.queue_name}"
    if not spec.output.location:
        message += "; spec.output.location is unset, so checkpoints stay in the pod and a retry starts over"
    return message


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
    limit = o.ftj.spec.run_policy.backoff_limit
    what = f"attempt {current.number} failed ({failure.reason}: {failure.message})"
    if current.number > limit:
        return Decision(Phase.FAILED, BACKOFF_LIMIT_EXCEEDED,
                        f"{what}; no retries left (spec.runPolicy.backoffLimit: {limit})", summary=failure.summary)
    number = current.number + 1
    return Decision(Phase.PENDING, RETRYING,
                    f"{what}; starting attempt {number} of {limit + 1}, which resumes from the last checkpoint",
                    _create(o, number), summary=failure.summary)


def suspended(o: Observed) -> Decision | None:
    if not o.ftj.spec.run_policy.suspend:
        return None
    current = o.current
    if current.suspended:
        return Decision(Phase.SUSPENDED, SUSPENDED,
                        f"attempt {current.number} is suspended (spec.runPolicy.suspend); set it to false to resume "
                        "from the last checkpoint")
    return Decision(Phase.SUSPENDED, SUSPENDED,
                    f"suspending attempt {current.number}: its pods stop after saving a checkpoint",
                    SuspendAttempt(current.number))


def queued(o: Observed) -> Decision | None:
    """Kueue owns a queued Job's suspend flag: it unsuspends the Job when it admits it and suspends it again when
    it preempts it. The status says what Kueue's Workload for the Job says (kueue.py)."""
    current, queue = o.current, o.ftj.spec.queue_name
    if not queue or not current.suspended:
        return None
    where = f"Kueue LocalQueue {queue}"
    kueue = current.queueing
    if kueue is None:
        return Decision(Phase.PENDING, QUEUED, f"attempt {current.number} waits for {where} to admit it (no "
                                               f"Workload for Job {attempt_name(o.name, current.number)} yet)")
    now = f"; Kueue now says: {kueue.message}" if kueue.message else ""
    if kueue.admitted and not kueue.evicted:  # for the moment until Kueue unsuspends the Job
        return Decision(Phase.PENDING, WAITING_FOR_PODS, f"Kueue admitted attempt {current.number} (Workload "
                                                         f"{kueue.workload}); its pods start")
    if kueue.evicted:
        reason = PREEMPTED if kueue.evicted_reason == EVICTED_BY_PREEMPTION else EVICTED
        return Decision(Phase.PENDING, reason,
                        f"Kueue stopped attempt {current.number} ({kueue.evicted_reason}: {kueue.evicted_message}); "
                        f"it resumes from the last checkpoint when {where} admits it again{now}")
    return Decision(Phase.PENDING, QUEUED, f"attempt {current.number} waits in {where} (Workload {kueue.workload})"
                                           f": {kueue.message or 'not admitted yet'}")


def resumed(o: Observed) -> Decision | None:
    current = o.current
    if not current.suspended:
        return None
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
        stalled = stall(o) or was_stalled(o)
        if stalled is not None and stalled.status:
            return Decision(Phase.RUNNING, STALLED, f"attempt {current.number}: {stalled.message}",
                            conditions=(stalled,))
        return Decision(Phase.RUNNING, TRAINER_RUNNING,
                        f"attempt {current.number}: {current.parallelism}/{current.parallelism} trainer pods running",
                        conditions=(stalled,) if stalled else ())
    message = f"attempt {current.number}: {started}/{current.parallelism} trainer pods running"
    stuck = next((p for p in current.pods if p.waiting), None)
    if stuck is None and started == 0 and (o.status.attempts or 0) < current.number:
        # The status does not record this attempt yet: a new job's creating pass writes no status (the reconciler
        # leaves that write to the next pass), or a pass was cut short after its POST. Say what creating it said.
        return Decision(Phase.PENDING, ATTEMPT_CREATED, _created_message(o, current.number))
    if stuck is None and started == 0 and o.recorded_reason[0] in STARTING:
        # Nothing has happened since the attempt was started: it stays what that transition said, so starting an
        # attempt is one status write, not a second one for "0/N running" right after it.
        return Decision(Phase.PENDING, *o.recorded_reason)
    if stuck is None:
        return Decision(Phase.PENDING, WAITING_FOR_PODS, message)
    # Its own reason, so the change is an Event (transition_event) and `kubectl get ftj` can say why it waits.
    reason, why = _why_waiting(stuck)
    return Decision(Phase.PENDING, reason, f"{message}; {why}")


# Order matters: each rule may assume the ones before it passed (e.g. a parsed spec, an existing attempt).
RULES: tuple[Callable[[Observed], Decision | None], ...] = (
    finished, invalid_spec, deadline_exceeded, no_attempt, succeeded, failed, suspended, queued, resumed, active,
)


def decide(o: Observed) -> Decision:
    for rule in RULES:
        decision = rule(o)
        if decision is not None:
            evaluated = evaluation_condition(decision.summary)
            if evaluated is None:
                return decision
            return replace(decision, conditions=(*decision.conditions, evaluated))
    raise AssertionError("the last rule always decides")


