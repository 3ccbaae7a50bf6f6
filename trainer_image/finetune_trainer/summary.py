"""The run's JSON summary: what the operator copies into the FineTuneJob's status (camelCase keys).

Written at exit, success or not, to ``<output>/summary.json`` and, inside a Kubernetes container, to
``/dev/termination-log`` (compact, under the 4096-byte limit Kubernetes reads). Schema::

    {"phase": "Succeeded" | "Failed" | "Interrupted", "reason", "message", "field", "exitCode",
     "startTime", "completionTime", "progress": {"step", "totalSteps", "epoch"},
     "metrics": {"trainLoss", "evalLoss", "evalAccuracy", ..., "samplesPerSecond", "tokensPerSecond"},
     "parameters": {"trainable", "total"}, "checkpoint": {"location", "step"} | null,
     "output": {"location"}, "outputs": [{"kind": "model" | "oci", "uri", "digest"}], "metricsUrl",
     "downloadBytes": {"model", "dataset", "checkpoint"},  # bytes this run fetched from s3:// (0: cache hit)
     "usage": {"samples", "tokens", "mfu"},   # this run's (attempt's) training work; mfu where the GPU is known
     "evaluation": {"split", "finalModel", "step", "metrics",
                    "gates": [{"metric", "value", "gate", "passed", "min", "max"}], "passed"} | absent,
                    # spec.evaluation's verdict on the final model (gates.py)
     "tracking": {"mlflowRunId", "mlflowExperimentId", "tensorboard", "degraded"} | null}

``outputs`` lists what the run produced, each with a digest: the model at ``<output>/model`` (export.tree_digest)
and, with ``output.push``, the artifact in the registry (``oci://registry/repo:tag@sha256:...``, the manifest's
digest).
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_trainer.config import EXIT_SUCCESS
from finetune_trainer.errors import Interrupted, TrainerError

TERMINATION_LOG_ENV = "FINETUNE_TERMINATION_LOG"
TERMINATION_LOG = "/dev/termination-log"
TERMINATION_LIMIT = 4096
# The fields a termination message keeps when nothing else fits, in the order they are given up from the end.
ESSENTIAL = ("phase", "reason", "message", "field", "exitCode", "startTime", "completionTime", "progress",
             "checkpoint", "output")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def metric_key(name: str) -> str:
    """A metric's key in the summary and in the FineTuneJob's status.metrics (the operator names scraped metrics with
    it too): eval_accuracy → evalAccuracy, eval_f1 → evalF1, eval_rougeL → evalRougeL."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


RUN_STATE = ("step", "total_steps", "epoch", "metrics", "trainable", "total", "checkpoint", "evaluation")


def outcome(error: TrainerError | None) -> str:
    """The summary's phase for a run that ended with ``error``."""
    if error is None:
        return "Succeeded"
    return "Interrupted" if isinstance(error, Interrupted) else "Failed"


@dataclass
class Report:
    """What the run has to say about itself so far; ``as_dict`` renders the summary."""

    output_location: str  # as the user wrote it (pvc://... or a path)
    start_time: str = field(default_factory=now)
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    trainable: int | None = None
    total: int | None = None
    checkpoint: dict[str, Any] | None = None
    model_location: str | None = None
    metrics_url: str | None = None
    samples: int = 0  # training examples and real tokens this run processed (all ranks)
    tokens: int = 0
    mfu: float | None = None  # model FLOP utilisation averaged over this run's steps, where the GPU's peak is known
    evaluation: dict[str, Any] | None = None
    downloads: dict[str, int] = field(default_factory=dict)  # bytes fetched from object storage, by what for
    outputs: list[dict[str, str]] = field(default_factory=list)

    def run_state(self) -> dict[str, Any]:
        """Where the run ended, kept in the export record so a push-only attempt reports the same summary."""
        return {k: getattr(self, k) for k in RUN_STATE}

    def restore(self, state: dict[str, Any]) -> None:
        for key in RUN_STATE:
            if key in state:
                setattr(self, key, state[key])
    tracking: dict[str, Any] | None = None  # tracking.Tracking.finish

    def record_metrics(self, values: dict[str, float]) -> None:
        self.metrics.update({metric_key(k): float(v) for k, v in values.items()})

    def as_dict(self, error: TrainerError | None) -> dict[str, Any]:
        phase = outcome(error)
        if error is None:
            reason, message, field_name, code = None, None, None, EXIT_SUCCESS
        else:
            reason, message, field_name, code = error.reason, str(error), error.field, error.exit_code
        return {
            "phase": phase, "reason": reason, "message": message, "field": field_name, "exitCode": code,
            "startTime": self.start_time, "completionTime": now(),
            "progress": {"step": self.step, "totalSteps": self.total_steps, "epoch": round(self.epoch, 4)},
            "metrics": {k: round(v, 6) for k, v in self.metrics.items()},
            "parameters": {"trainable": self.trainable, "total": self.total},
            "checkpoint": self.checkpoint,
            "output": {"location": self.model_location or self.output_location},
            "outputs": self.outputs,
            "metricsUrl": self.metrics_url,
            "downloadBytes": dict(self.downloads),
            "usage": {k: v for k, v in (("samples", self.samples), ("tokens", self.tokens),
                                        ("mfu", None if self.mfu is None else round(self.mfu, 4))) if v is not None},
            **({"evaluation": self.evaluation} if self.evaluation is not None else {}),
            "tracking": self.tracking,
        }


FILE = "summary.json"


def write(summary: dict[str, Any], output: Path) -> None:
    """``<output>/summary.json`` (atomically) and the container's termination log when there is one."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        tmp = output / ".summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, output / FILE)
    except OSError:
        pass  # the summary must not mask the run's own outcome; the termination log may still carry it
    _write_termination_log(summary)


def termination_message(summary: dict[str, Any]) -> str:
    """Compact JSON under Kubernetes' 4096-byte limit: the message is shortened first, then metrics dropped."""
    text = json.dumps(summary, separators=(",", ":"))
    if len(text.encode()) <= TERMINATION_LIMIT:
        return text
    trimmed = dict(summary)
    if trimmed.get("message"):
        excess = len(text.encode()) - TERMINATION_LIMIT + 16
        trimmed["message"] = trimmed["message"][: max(80, len(trimmed["message"]) - excess)] + "..."
    text = json.dumps(trimmed, separators=(",", ":"))
    if len(text.encode()) > TERMINATION_LIMIT and (trimmed.get("tracking") or {}).get("degraded"):
        trimmed["tracking"] = {**trimmed["tracking"], "degraded": trimmed["tracking"]["degraded"][:200]}
        text = json.dumps(trimmed, separators=(",", ":"))
    if len(text.encode()) > TERMINATION_LIMIT:
        trimmed["metrics"] = {k: v for k, v in trimmed["metrics"].items() if k in ("trainLoss", "evalLoss")}
        if trimmed.get("evaluation"):  # the gates' verdicts stay; the other evaluated metrics are in summary.json
            gated = {metric_key(g["metric"]) for g in trimmed["evaluation"]["gates"]}
            trimmed["evaluation"] = {**trimmed["evaluation"], "metrics": {
                k: v for k, v in trimmed["evaluation"]["metrics"].items() if k in gated}}
        text = json.dumps(trimmed, separators=(",", ":"))
    if len(text.encode()) > TERMINATION_LIMIT:
        # Still too large (many outputs, long locations): what the operator decides on, bounded. Never JSON cut
        # mid-way, which the operator could not read at all; the whole summary is in <output>/summary.json.
        essential = {k: trimmed[k] for k in ESSENTIAL if trimmed.get(k) is not None}
        essential["message"] = str(essential.get("message", ""))[:400]
        for dropped in (None, "output", "checkpoint", "progress"):
            essential.pop(dropped, None)
            text = json.dumps(essential, separators=(",", ":"))
            if len(text.encode()) <= TERMINATION_LIMIT:
                break
    return text


def _write_termination_log(summary: dict[str, Any]) -> None:
    # Only an existing, writable file: Kubernetes mounts it; elsewhere /dev must not gain a new file.
    path = Path(os.environ.get(TERMINATION_LOG_ENV, TERMINATION_LOG))
    if path.is_file() and os.access(path, os.W_OK):
        try:
            path.write_text(termination_message(summary))
        except OSError:
            pass
