"""The Notice of one transition of a FineTuneJob: what every sink is told, whatever its format.

A transition is what events.transition_event says deserves a Kubernetes Event (a new phase or reason); the
reconciler builds the Notice from the FineTuneJob and the status it just wrote, so later reasons and conditions
reach the sinks without code here. The id is deterministic (uid, generation, attempt, phase, reason): a pass
retried after a failed status write, or a retried delivery, carries the same id, and receivers drop duplicates
by it (the CloudEvent ``id``, the ``Idempotency-Key`` header).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from finetune_operator.api import API_VERSION, KIND, PLURAL, format_time

# Receivers may key on this namespace: uuid5(NOTICE_NAMESPACE, "<uid>/<generation>/<attempt>/<phase>/<reason>").
NOTICE_NAMESPACE = uuid.UUID("5d1f6e2a-7c4b-4f0e-9a51-3b8e2f6c9d10")
# The metrics a notice carries: the training loss and the evaluation's (status.metrics holds only these and
# throughput); more would make chat messages unreadable.
MAX_METRICS = 8


@dataclass(frozen=True)
class Notice:
    id: str
    namespace: str
    name: str
    uid: str
    phase: str
    reason: str
    message: str
    severity: str  # the Event's type: Normal or Warning
    time: str  # RFC 3339, the pass's clock
    attempt: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)  # model, checkpoint: locations as the user wrote them
    resource_version: str | None = None  # for the Event that says a delivery was given up

    @property
    def source(self) -> str:
        """The FineTuneJob's API path: the CloudEvent ``source``."""
        return f"/apis/{API_VERSION}/namespaces/{self.namespace}/{PLURAL}/{self.name}"

    def payload(self) -> dict[str, Any]:
        """The JSON every encoder starts from (the CloudEvent's ``data``)."""
        return {
            "finetunejob": {"apiVersion": API_VERSION, "kind": KIND, "namespace": self.namespace, "name": self.name,
                            "uid": self.uid},
            "phase": self.phase, "reason": self.reason, "message": self.message, "severity": self.severity,
            "attempt": self.attempt, "metrics": self.metrics, "outputs": self.outputs, "time": self.time,
        }


def notice_id(uid: str, generation: int | None, attempt: int | None, phase: str, reason: str) -> str:
    return str(uuid.uuid5(NOTICE_NAMESPACE, f"{uid}/{generation or 0}/{attempt or 0}/{phase}/{reason}"))


def headline_metrics(metrics: dict[str, float] | None) -> dict[str, float]:
    chosen = {k: v for k, v in (metrics or {}).items() if k == "trainLoss" or k.startswith("eval")}
    return dict(sorted(chosen.items())[:MAX_METRICS])


def build_notice(ftj: dict[str, Any], status: dict[str, Any], event: tuple[str, str, str], now: datetime) -> Notice:
    """The Notice of ``event`` ((type, reason, message) from events.transition_event) after ``status`` was written."""
    meta = ftj["metadata"]
    severity, reason, message = event
    phase, attempt = status.get("phase", ""), status.get("attempts")
    outputs = {key: status[key]["location"] for key in ("output", "checkpoint") if (status.get(key) or {}).get("location")}
    if "output" in outputs:
        outputs["model"] = outputs.pop("output")
    return Notice(
        id=notice_id(meta.get("uid", ""), meta.get("generation"), attempt, phase, reason),
        namespace=meta["namespace"], name=meta["name"], uid=meta.get("uid", ""),
        phase=phase, reason=reason, message=message, severity=severity, time=format_time(now), attempt=attempt,
        metrics=headline_metrics(status.get("metrics")), outputs=outputs,
        resource_version=meta.get("resourceVersion"),
    )
