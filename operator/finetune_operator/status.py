"""Turn the trainer's exit summary into the FineTuneJob status fields it determines.

The trainer writes one summary (to /dev/termination-log in a pod, to <output>/summary.json everywhere); the
operator reads it from the container's termination message and `finetune run` from the returned dict. Both
build the status through this function, so a local run prints exactly what the cluster would show.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from finetune_operator.api import CheckpointStatus, FineTuneJobStatus, OutputStatus, Parameters, Phase, Progress

# The summary's phases map onto the job's phases; "Interrupted" is a retryable stop: the job is not over.
_PHASES = {"Succeeded": Phase.SUCCEEDED, "Failed": Phase.FAILED, "Interrupted": Phase.RUNNING}
# A condition reason as metav1.Condition admits it; a summary's reason becomes the Ready condition's.
REASON_PATTERN = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
REASON_LIMIT = 128
# Messages end up in a condition and an Event; the trainer's own are a few lines.
MESSAGE_LIMIT = 4096
_MODELS: dict[str, type[BaseModel]] = {
    "progress": Progress, "parameters": Parameters, "checkpoint": CheckpointStatus, "output": OutputStatus,
}


def read_summary(raw: dict[str, Any]) -> dict[str, Any]:
    """The parts of a termination-message summary that have the trainer's schema, each checked on its own.

    With a custom ``spec.image`` the message can hold any JSON, so it is input like a spec: a part that does not
    fit is dropped (a failure without a usable reason then reads as a plain exit code), never passed on to a
    status the CRD would refuse or a condition reason Kubernetes would reject.
    """
    out: dict[str, Any] = {}
    if raw.get("phase") in _PHASES:
        out["phase"] = raw["phase"]
    reason = raw.get("reason")
    if isinstance(reason, str) and len(reason) <= REASON_LIMIT and REASON_PATTERN.match(reason):
        out["reason"] = reason
    for key in ("message", "field"):
        if isinstance(raw.get(key), str):
            text = raw[key]
            out[key] = text if len(text) <= MESSAGE_LIMIT else text[:MESSAGE_LIMIT - 1] + "…"
    if isinstance(raw.get("exitCode"), int):
        out["exitCode"] = raw["exitCode"]
    if isinstance(raw.get("metrics"), dict):
        out["metrics"] = {k: float(v) for k, v in raw["metrics"].items()
                          if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    for key, model in _MODELS.items():
        try:
            out[key] = model.model_validate(raw.get(key)).wire()
        except ValidationError:
            pass
    for key in ("startTime", "completionTime"):
        if isinstance(raw.get(key), str) and _is_time(raw[key]):
            out[key] = raw[key]
    return out


def _is_time(value: str) -> bool:
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


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
    """The status fields a trainer summary settles: phase, progress, metrics, parameters, locations.

    Conditions, attempts and times of the cluster object are the lifecycle's business, not the summary's.
    """
    summary = read_summary(summary)
    fields: dict[str, Any] = {
        "phase": _PHASES.get(summary.get("phase", ""), Phase.FAILED),
        "progress": progress_from_summary(summary),
        "metrics": summary.get("metrics"),
        "parameters": summary.get("parameters"),
        "checkpoint": summary.get("checkpoint"),
        "output": summary.get("output") if summary.get("phase") == "Succeeded" else None,
        "startTime": summary.get("startTime"),
        "completionTime": summary.get("completionTime") if summary.get("phase") != "Interrupted" else None,
    }
    return FineTuneJobStatus.model_validate({k: v for k, v in fields.items() if v is not None and v != {}})
