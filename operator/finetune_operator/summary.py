"""The trainer's exit summary as the operator reads it: each part checked against the trainer's schema, once.

The trainer writes one summary (finetune_trainer/summary.py: to /dev/termination-log in a pod, to
<output>/summary.json everywhere). The operator reads it from the container's termination message
(observed.Terminated.summary) and `finetune run` from the file; both read it here and hand the result on, so
status.py and the lifecycle take it as read.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from finetune_operator.api import (CheckpointStatus, EvaluationStatus, OutputStatus, Parameters, ProducedOutput,
                                   Progress, TrackingStatus, WorkDone)

# The phases a summary can report ("Interrupted": a retryable stop, the FineTuneJob is not over).
PHASES = ("Succeeded", "Failed", "Interrupted")
# A condition reason as metav1.Condition admits it; a summary's reason becomes the Ready condition's.
REASON_PATTERN = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
REASON_LIMIT = 128
# Messages end up in a condition and an Event; the trainer's own are a few lines.
MESSAGE_LIMIT = 4096
_MODELS: dict[str, type[BaseModel]] = {
    "progress": Progress, "parameters": Parameters, "checkpoint": CheckpointStatus, "output": OutputStatus,
    "evaluation": EvaluationStatus, "usage": WorkDone,
}


def read_summary(raw: dict[str, Any]) -> dict[str, Any]:
    """The parts of a termination-message summary that have the trainer's schema, each checked on its own.

    With a custom ``spec.image`` the message can hold any JSON, so it is input like a spec: a part that does not
    fit is dropped (a failure without a usable reason then reads as a plain exit code), never passed on to a
    status the CRD would refuse or a condition reason Kubernetes would reject.
    """
    out: dict[str, Any] = {}
    if raw.get("phase") in PHASES:
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
    if isinstance(raw.get("outputs"), list):
        out["outputs"] = [entry for entry in map(_output, raw["outputs"]) if entry]
    for key in ("startTime", "completionTime"):
        if isinstance(raw.get(key), str) and _is_time(raw[key]):
            out[key] = raw[key]
    tracking = _tracking(raw.get("tracking"))
    if tracking:
        out["tracking"] = tracking
    return out


def _output(raw: Any) -> dict[str, Any] | None:
    try:
        return ProducedOutput.model_validate(raw).wire()
    except ValidationError:
        return None


def _tracking(raw: Any) -> dict[str, Any] | None:
    """Where the run's tracking data is (status.tracking) and, under ``degraded``, what tracking missed."""
    if not isinstance(raw, dict):
        return None
    try:
        out = TrackingStatus.model_validate({k: v for k, v in raw.items() if k != "degraded"}).wire()
    except ValidationError:
        out = {}
    if isinstance(raw.get("degraded"), str) and raw["degraded"]:
        out["degraded"] = raw["degraded"][:MESSAGE_LIMIT]
    return out or None


def _is_time(value: str) -> bool:
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True
