"""Why an attempt failed, and whether another attempt can help: what a retry can fix (the trainer's retryable exit
code, a disruption, a crash from outside) starts the next attempt; what it cannot (the trainer's permanent exit
code, OOMKilled, the deadline) ends the FineTuneJob with the trainer's own reason.

Pure, like the lifecycle rules that use it (lifecycle.failed): from an ``ObservedAttempt`` to a ``Failure``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetune_operator.observed import ObservedAttempt, ObservedPod
from finetune_trainer.config import EXIT_PERMANENT

# The reasons of failed attempts the operator gives itself; a trainer that explains its failure names its own.
DEADLINE_EXCEEDED = "DeadlineExceeded"
OUT_OF_MEMORY = "OutOfMemory"
TRAINER_FAILED = "TrainerFailed"  # permanent exit without a summary to name the reason
TRAINER_EXITED = "TrainerExited"  # any other non-zero exit: retried, as a Job would
POD_DISRUPTED = "PodDisrupted"


@dataclass(frozen=True)
class Failure:
    """Why an attempt failed, and whether another attempt can help."""

    retryable: bool
    reason: str
    message: str
    summary: dict[str, Any] | None = None


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
