"""The FineTuneJob's status after a decision: conditions, attempts, times, and what the trainer reported.

``next_status`` is the whole status the reconciler writes after lifecycle.decide; the trainer's summary (as
summary.read_summary returns it) settles progress, metrics, parameters, locations, outputs and the evaluation through
``status_from_summary``, which `finetune run` uses too, so a local run prints exactly what the cluster would show.
status.usage is usage.py's.
"""

from __future__ import annotations

from typing import Any

from finetune_operator.api import FineTuneJobStatus, Phase, format_time
from finetune_operator.conditions import STALLED
from finetune_operator.lifecycle import KUEUE_WAITING, TERMINAL, CreateAttempt, Decision, ResumeAttempt
from finetune_operator.observed import Observed
from finetune_operator.usage import next_usage

# Condition types. Ready is the summary condition (True once the FineTuneJob succeeded) and always carries the
# latest reason and message, so `kubectl wait --for=condition=Ready` and dashboards need to look at one place only.
# Queued is not a phase: it is True while Kueue holds the job's Job (Pending, reasons lifecycle.KUEUE_WAITING).
CONDITION_TYPES = ("Ready", "Running", "Succeeded", "Failed", "Suspended", "Queued")
_TRUE_IN = {"Ready": Phase.SUCCEEDED, "Running": Phase.RUNNING, "Succeeded": Phase.SUCCEEDED,
            "Failed": Phase.FAILED, "Suspended": Phase.SUSPENDED}
# The summary's phases map onto the FineTuneJob's phases; "Interrupted" is a retryable stop: the job is not over.
_PHASES = {"Succeeded": Phase.SUCCEEDED, "Failed": Phase.FAILED, "Interrupted": Phase.RUNNING}
# Set from an attempt's summary when experiment tracking missed something (the trainer trained on regardless).
TRACKING_DEGRADED = "TrackingDegraded"


def _conditions(o: Observed, d: Decision) -> list[dict[str, Any]]:
    """Every condition after this decision: the phase's, the decision's own, TrackingDegraded, and the others kept."""
    previous = {c.type: c for c in o.status.conditions or []}
    now = format_time(o.now)

    def condition(ctype: str, status: str, reason: str, message: str) -> dict[str, Any]:
        old = previous.get(ctype)
        return {"type": ctype, "status": status, "reason": reason, "message": message,
                # The time the status flipped, not the time the message last changed.
                "lastTransitionTime": old.last_transition_time if old and old.status == status else now,
                "observedGeneration": o.generation}

    def true(ctype: str) -> bool:
        return d.reason in KUEUE_WAITING if ctype == "Queued" else d.phase == _TRUE_IN[ctype]

    conditions = [condition(t, "True" if true(t) else "False", d.reason, d.message) for t in CONDITION_TYPES]
    stalled = previous.get(STALLED)
    if stalled and stalled.status == "True" and d.phase != Phase.RUNNING:
        conditions.append(condition(STALLED, "False", d.reason, d.message))  # not running: nothing to stall
    for c in d.conditions:
        conditions.append(condition(c.type, "True" if c.status else "False", c.reason, c.message))
    conditions += _tracking_condition(o, d)
    # Conditions this decision does not speak about keep their value (EvaluationPassed of a finished job).
    kept = set(CONDITION_TYPES) | {c["type"] for c in conditions}
    conditions += [c.wire() for t, c in previous.items() if t not in kept]
    return conditions


def _progress(o: Observed, scraped: dict[str, Any]) -> dict[str, Any]:
    """Scraped progress, stamped with the time its step last moved (the Stalled condition's clock)."""
    recorded = o.status.progress
    moved = recorded is None or recorded.step != scraped.get("step") or not recorded.last_step_time
    return {**scraped, "lastStepTime": format_time(o.now) if moved else recorded.last_step_time}


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
        # A job whose creating pass wrote no status (reconciler.py) started when its first Job was made.
        status.setdefault("startTime", o.current.created or format_time(o.now))
    if isinstance(d.action, ResumeAttempt):
        status["startTime"] = format_time(o.now)  # restarts the deadline's clock, as a resumed Job does
    if o.scraped and d.phase == Phase.RUNNING and o.scraped.get("progress"):
        status["progress"] = _progress(o, o.scraped["progress"])
    elif d.phase != Phase.RUNNING and status.get("progress"):
        status["progress"] = {k: v for k, v in status["progress"].items() if k != "lastStepTime"}
    if o.scraped and d.phase == Phase.RUNNING:
        status["parameters"] = o.scraped.get("parameters") or status.get("parameters")
        status["metrics"] = {**status.get("metrics", {}), **(o.scraped.get("metrics") or {})}
    if d.summary:
        settled = status_from_summary(d.summary).wire()
        for key in ("progress", "parameters", "checkpoint", "output", "outputs", "evaluation", "tracking"):
            if key in settled:
                status[key] = settled[key]
        status["metrics"] = {**status.get("metrics", {}), **settled.get("metrics", {})}
    if d.phase.value in TERMINAL:
        status.setdefault("completionTime", format_time(o.now))
    status["usage"] = next_usage(o, status.get("completionTime"))
    status.update(phase=d.phase.value, conditions=_conditions(o, d),
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
        # What exists exists: a model exported before a failed push is listed with its digest.
        "outputs": summary.get("outputs") or None,
        "startTime": summary.get("startTime"),
        "completionTime": summary.get("completionTime") if summary.get("phase") != "Interrupted" else None,
        "evaluation": _evaluation(summary.get("evaluation")),
        # The run's own work; in a cluster status.usage (usage.py) sums it over the attempts with their resources.
        "usage": summary.get("usage"),
        "tracking": {k: v for k, v in (summary.get("tracking") or {}).items() if k != "degraded"} or None,
    }
    return FineTuneJobStatus.model_validate({k: v for k, v in fields.items() if v is not None and v != {}})


def _evaluation(evaluation: dict[str, Any] | None) -> dict[str, Any] | None:
    """The trainer's evaluation block with its headline (the printer column): the first gate's metric, else the
    first metric that is not a loss."""
    if not evaluation:
        return None
    gates = evaluation.get("gates") or []
    metrics = evaluation.get("metrics") or {}
    if gates:
        headline = f"{gates[0]['metric']}={gates[0]['value']:.4g}"
    else:
        name = next((k for k in metrics if k != "evalLoss"), next(iter(metrics), None))
        headline = f"{name}={metrics[name]:.4g}" if name else None
    return {**evaluation, "headline": headline}
