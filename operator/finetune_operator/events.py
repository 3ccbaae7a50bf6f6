"""The Kubernetes Events the operator posts about a FineTuneJob: which transitions post one, and the Event itself.

An Event for a transition a user acts on or waits for: the end (Succeeded, Failed), every Warning (a retry, a pod
that cannot be scheduled or started, a stall), what a person or Kueue did (Suspended, Resumed, Queued, Preempted,
Evicted) and the job carrying on after any of those. The routine steps of a run that goes well (AttemptCreated,
WaitingForPods, TrainerRunning after each other) post none: the status's phase, conditions and their transition
times show them, and at 500 jobs they were 3 of the operator's 17 requests per job (BENCHMARKS.md §5). Why not
client-go's aggregation instead: its correlator folds repeats of the same reason into one Event (still a PATCH per
repeat) and similar Events only past 10 in 10 minutes; each transition here has its own reason, so it would save
nothing. The notification sinks (notify/) are told of every Event's transition and of every change of phase
(`transition_notice`): a run starting is news to a pipeline waiting on it, though not worth an Event, and a notice
costs the API server nothing.

A Warning for failures and for what a user must fix; the reconciler builds the Event with its own clock and
kube.py posts it. Kopf's own event posting is off (handlers.configure), so every Event a user sees carries a
lifecycle reason.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from finetune_operator.api import API_VERSION, KIND, Phase, format_time
from finetune_operator.conditions import STALLED
from finetune_operator.lifecycle import (ATTEMPT_CREATED, CONTAINER_CANNOT_START, IMAGE_PULL_FAILED, RETRYING,
                                         TRAINER_RUNNING, UNSCHEDULABLE, WAITING_FOR_PODS, Decision)
from finetune_operator.observed import Observed

SOURCE = "finetune-operator"
# Event messages are for people; a long trainer message is cut here (the full text is in the condition).
MAX_MESSAGE = 1024
# A sink did not get a notification (notify/delivery.py gave up); not a transition of the job.
NOTIFICATION_FAILED = "NotificationFailed"
WARNING_REASONS = frozenset({RETRYING, UNSCHEDULABLE, IMAGE_PULL_FAILED, CONTAINER_CANNOT_START, STALLED})
# The steps of a run that goes well; a transition between two of them (or from no status yet) posts no Event.
ROUTINE_REASONS = frozenset({"", ATTEMPT_CREATED, WAITING_FOR_PODS, TRAINER_RUNNING})


def build_event(ftj: dict[str, Any], type_: str, reason: str, message: str, now: datetime,
                host: str) -> dict[str, Any]:
    """A v1 Event about ``ftj`` (the FineTuneJob as read from the API); ``type_`` is Normal or Warning."""
    meta = ftj["metadata"]
    stamp = format_time(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": API_VERSION, "kind": KIND, "name": meta["name"], "namespace": meta["namespace"],
            "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "source": {"component": SOURCE, "host": host},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def transition_event(o: Observed, d: Decision) -> tuple[str, str, str] | None:
    """(type, reason, message) of the Event for this decision, or None when nothing changed or the change is a
    routine step."""
    if (o.status.phase, o.recorded_reason[0]) == (d.phase.value, d.reason):
        return None
    before = o.recorded_reason[0] if o.status.phase else ""  # "": a new job, no status yet
    if before in ROUTINE_REASONS and d.reason in ROUTINE_REASONS:
        return None
    warning = d.phase == Phase.FAILED or d.reason in WARNING_REASONS
    return ("Warning" if warning else "Normal", d.reason, d.message)


def transition_notice(o: Observed, d: Decision, event: tuple[str, str, str] | None) -> tuple[str, str, str] | None:
    """(severity, reason, message) of the notification for this decision: the Event's, or a Normal one when the
    phase changed without an Event (a new job's Pending, a routine start's Running)."""
    if event or o.status.phase == d.phase.value:
        return event
    return ("Normal", d.reason, d.message)
