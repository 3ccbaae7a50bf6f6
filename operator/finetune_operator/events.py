"""The Kubernetes Events the operator posts about a FineTuneJob: which transitions post one, and the Event itself.

One Event per transition (a new phase or reason), a Warning for failures and for what a user must fix; the
reconciler builds it with its own clock and kube.py posts it. Kopf's own event posting is off (handlers.configure),
so every Event a user sees carries a lifecycle reason.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from finetune_operator.api import API_VERSION, KIND, Phase, format_time
from finetune_operator.conditions import STALLED
from finetune_operator.lifecycle import (CONTAINER_CANNOT_START, IMAGE_PULL_FAILED, RETRYING, UNSCHEDULABLE,
                                         Decision)
from finetune_operator.observed import Observed

SOURCE = "finetune-operator"
# Event messages are for people; a long trainer message is cut here (the full text is in the condition).
MAX_MESSAGE = 1024
# A sink did not get a notification (notify/delivery.py gave up); not a transition of the job.
NOTIFICATION_FAILED = "NotificationFailed"
WARNING_REASONS = frozenset({RETRYING, UNSCHEDULABLE, IMAGE_PULL_FAILED, CONTAINER_CANNOT_START, STALLED})


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
    """(type, reason, message) of the Event for this decision, or None when nothing changed."""
    if (o.status.phase, o.recorded_reason[0]) == (d.phase.value, d.reason):
        return None
    warning = d.phase == Phase.FAILED or d.reason in WARNING_REASONS
    return ("Warning" if warning else "Normal", d.reason, d.message)
