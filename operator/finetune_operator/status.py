"""Turn the trainer's exit summary into the FineTuneJob status fields it determines.

The trainer writes one summary (to /dev/termination-log in a pod, to <output>/summary.json everywhere); the
operator reads it from the container's termination message and `finetune run` from the returned dict. Both
build the status through this function, so a local run prints exactly what the cluster would show.
"""

from __future__ import annotations

from typing import Any

from finetune_operator.api import FineTuneJobStatus, Phase

# The summary's phases map onto the job's phases; "Interrupted" is a retryable stop: the job is not over.
_PHASES = {"Succeeded": Phase.SUCCEEDED, "Failed": Phase.FAILED, "Interrupted": Phase.RUNNING}


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
    fields: dict[str, Any] = {
        "phase": _PHASES.get(summary.get("phase", ""), Phase.FAILED),
        "progress": progress_from_summary(summary),
        "metrics": {k: float(v) for k, v in (summary.get("metrics") or {}).items() if isinstance(v, (int, float))},
        "parameters": p if isinstance(p := summary.get("parameters"), dict) and None not in p.values() else None,
        "checkpoint": summary.get("checkpoint"),
        "output": summary.get("output") if summary.get("phase") == "Succeeded" else None,
        "startTime": summary.get("startTime"),
        "completionTime": summary.get("completionTime") if summary.get("phase") != "Interrupted" else None,
    }
    return FineTuneJobStatus.model_validate({k: v for k, v in fields.items() if v is not None and v != {}})
