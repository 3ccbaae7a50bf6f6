"""The FineTuneJob's status after a decision: conditions, attempts, times, and what the trainer reported.

``next_status`` is the whole status the reconciler writes after lifecycle.decide; the trainer's summary (as
summary.read_summary returns it) settles progress, metrics, parameters and locations through
``status_from_summary``, which `finetune run` uses too, so a local run prints exactly what the cluster would show.
"""

from __future__ import annotations

from typing import Any

from finetune_operator.api import FineTuneJobStatus, Phase, format_time
from finetune_operator.lifecycle import TERMINAL, CreateAttempt, Decision, ResumeAttempt
from finetune_operator.observed import Observed

# Condition types. Ready is the summary condition (True once the FineTuneJob succeeded) and always carries the
# latest reason and message, so `kubectl wait --for=condition=Ready` and dashboards need to look at one place only.
CONDITION_TYPES = ("Ready", "Running", "Succeeded", "Failed", "Suspended")
_TRUE_IN = {"Ready": Phase.SUCCEEDED, "Running": Phase.RUNNING, "Succeeded": Phase.SUCCEEDED,
            "Failed": Phase.FAILED, "Suspended": Phase.SUSPENDED}
# The summary's phases map onto the FineTuneJob's phases; "Interrupted" is a retryable stop: the job is not over.
_PHASES = {"Succeeded": Phase.SUCCEEDED, "Failed": Phase.FAILED, "Interrupted": Phase.RUNNING}
# Set from an attempt's summary when experiment tracking missed something (the trainer trained on regardless).
TRACKING_DEGRADED = "TrackingDegraded"


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


def _tracking_condition(o: Observed, d: Decision) -> list[dict[str, Any]]:
    """TrackingDegraded: True from a summary saying tracking missed something, False once a later attempt's summary
    says nothing was missed; else as it was (absent for a job whose tracking never failed)."""
    previous = next((c.wire() for c in o.status.conditions or [] if c.type == TRACKING_DEGRADED), None)
    tracking = (d.summary or {}).get("tracking")
    if tracking is None or (previous is None and "degraded" not in tracking):
        return [previous] if previous else []
    degraded = tracking.get("degraded")
    status = "True" if degraded else "False"
    unchanged = previous is not None and previous["status"] == status
    return [{
        "type": TRACKING_DEGRADED, "status": status,
        "reason": "TrackingServerUnavailable" if degraded else "TrackingComplete",
        "message": degraded or "every tracking update of the last attempt was logged",
        "lastTransitionTime": previous["lastTransitionTime"] if unchanged else format_time(o.now),
        "observedGeneration": o.generation,
    }]


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
        for key in ("progress", "parameters", "checkpoint", "output", "tracking"):
            if key in settled:
                status[key] = settled[key]
        status["metrics"] = {**status.get("metrics", {}), **settled.get("metrics", {})}
    if d.phase.value in TERMINAL:
        status.setdefault("completionTime", format_time(o.now))
    status.update(phase=d.phase.value, conditions=_conditions(o, d) + _tracking_condition(o, d),
                  observedGeneration=o.generation)
    return {k: v for k, v in status.items() if v not in (None, {})}


def progress_from_summary(summary: dict[str, Any]) -> dict[str, Any] | None:
    progress = summary.get("progress")
    if not progress:
        return None
    step, total = progress.get("step", 0), progress.get("totalSteps")
    out = {"step": step, "totalSteps": total, "epoch": progress.get("epoch")}
    if total:
        out["percent"] = round(100.0 * min(step, total) / total, 1)
    if summary.get("phase") == "Succeeded":
        out["etaSeconds"] = 0
    return {k: v for k, v in out.items() if v is not None}


def status_from_summary(summary: dict[str, Any]) -> FineTuneJobStatus:
    """The status fields a summary (as ``read_summary`` returns it) settles: phase, progress, metrics, parameters,
    locations. Conditions, attempts and times of the cluster object are the lifecycle's business, not the summary's.
    """
    fields: dict[str, Any] = {
        "phase": _PHASES.get(summary.get("phase", ""), Phase.FAILED),
        "progress": progress_from_summary(summary),
        "metrics": summary.get("metrics"),
        "parameters": summary.get("parameters"),
        "checkpoint": summary.get("checkpoint"),
        "output": summary.get("output") if summary.get("phase") == "Succeeded" else None,
        "startTime": summary.get("startTime"),
        "completionTime": summary.get("completionTime") if summary.get("phase") != "Interrupted" else None,
        "tracking": {k: v for k, v in (summary.get("tracking") or {}).items() if k != "degraded"} or None,
    }
    return FineTuneJobStatus.model_validate({k: v for k, v in fields.items() if v is not None and v != {}})
