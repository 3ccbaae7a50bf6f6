"""What a person sees of FineTuneJobs in a cluster: the `finetune get` table, `finetune describe`, and the order in
which `finetune logs` shows the pods of every attempt.

Pure functions of the objects as the API returns them (dicts) and a clock, so the cluster commands (cluster_cli.py)
only fetch and print, and every line here is tested without a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from finetune_operator.api import parse_time
from finetune_operator.names import COMPLETION_INDEX_ANNOTATION, LABEL_ATTEMPT, attempt_name

BAR_WIDTH = 20
TERMINAL_PHASES = ("Succeeded", "Failed")


def progress_bar(progress: dict[str, Any] | None, width: int = BAR_WIDTH) -> str:
    """``[########------------]  40% step 80/200 ETA 3m20s`` from status.progress; "-" before the first step."""
    progress = progress or {}
    percent = progress.get("percent")
    if percent is None:
        return "-"
    filled = min(width, int(width * percent / 100))
    bar = f"[{'#' * filled}{'-' * (width - filled)}] {percent:3.0f}%"
    if progress.get("totalSteps"):
        bar += f" step {progress.get('step', 0)}/{progress['totalSteps']}"
    if progress.get("etaSeconds") and percent < 100:
        bar += f" ETA {duration(progress['etaSeconds'])}"
    return bar


def duration(seconds: float) -> str:
    """As kubectl shows ages: 45s, 3m20s, 2h5m, 3d4h."""
    seconds = int(max(seconds, 0))
    for unit, size, small, small_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if seconds >= size:
            rest = (seconds % size) // small_size
            return f"{seconds // size}{unit}" + (f"{rest}{small}" if rest and seconds < 10 * size else "")
    return f"{seconds}s"


def _age(obj: dict[str, Any], now: datetime) -> str:
    created = obj.get("metadata", {}).get("creationTimestamp")
    return duration((now - parse_time(created)).total_seconds()) if created else "-"


def summary(status: dict[str, Any]) -> tuple[str, str]:
    """The latest reason and message: the Ready condition carries them (status.py)."""
    ready = next((c for c in status.get("conditions") or () if c.get("type") == "Ready"), {})
    return ready.get("reason", ""), ready.get("message", "")


def _columns(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows) + "\n"


def table(ftjs: list[dict[str, Any]], now: datetime, with_namespace: bool = False) -> str:
    """The `finetune get` table, one FineTuneJob a row, sorted by namespace and name."""
    head = ["NAME", "PHASE", "PROGRESS", "LOSS", "ATTEMPTS", "REASON", "AGE"]
    rows = [(["NAMESPACE"] if with_namespace else []) + head]
    for ftj in sorted(ftjs, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])):
        status = ftj.get("status") or {}
        loss = (status.get("metrics") or {}).get("trainLoss")
        row = [ftj["metadata"]["name"], status.get("phase") or "-", progress_bar(status.get("progress")),
               f"{loss:.4g}" if loss is not None else "-", str(status.get("attempts") or 0),
               summary(status)[0] or "-", _age(ftj, now)]
        rows.append(([ftj["metadata"].get("namespace", "")] if with_namespace else []) + row)
    return _columns(rows)


# ---------------------------------------------------------------------------------------------- logs

@dataclass(frozen=True)
class LogSource:
    """One pod whose log `finetune logs` prints, or an attempt without a pod (``pod`` None)."""

    attempt: int
    rank: int
    pod: str | None
    phase: str = ""

    def key(self) -> LogSource:
        """The same pod whatever phase it was seen in (`logs -f` shows each once)."""
        return LogSource(self.attempt, self.rank, self.pod)

    def header(self, finetunejob: str) -> str:
        if self.pod is None:
            return f"==> attempt {self.attempt} ({attempt_name(finetunejob, self.attempt)}): no pod, so no log " \
                   f"(not created yet, or deleted) <=="
        return f"==> attempt {self.attempt}, rank {self.rank}: pod {self.pod} ({self.phase}) <=="


def _rank(pod: dict[str, Any]) -> int:
    index = pod["metadata"].get("annotations", {}).get(COMPLETION_INDEX_ANNOTATION, "0")
    return int(index) if index.isdigit() else 0


def log_sources(attempts: int, pods: list[dict[str, Any]]) -> list[LogSource]:
    """Every attempt in order (1..attempts), each attempt's pods by rank, then by creation (a rank whose pod was
    replaced within an attempt shows both); an attempt without pods (deleted, preempted, not created yet) says so."""
    by_attempt: dict[int, list[dict[str, Any]]] = {}
    for pod in pods:
        label = pod["metadata"].get("labels", {}).get(LABEL_ATTEMPT, "")
        if label.isdigit():
            by_attempt.setdefault(int(label), []).append(pod)
    sources: list[LogSource] = []
    for attempt in range(1, max([attempts, *by_attempt]) + 1):
        found = sorted(by_attempt.get(attempt, []), key=lambda p: (_rank(p), p["metadata"].get("creationTimestamp", ""),
                                                                    p["metadata"]["name"]))
        sources += [LogSource(attempt, _rank(p), p["metadata"]["name"], p.get("status", {}).get("phase", ""))
                    for p in found] or [LogSource(attempt, 0, None)]
    return sources


# ---------------------------------------------------------------------------------------------- describe

def _fields(pairs: list[tuple[str, Any]], indent: str = "") -> list[str]:
    shown = [(k, v) for k, v in pairs if v not in (None, "", [], {})]
    width = max((len(k) for k, _ in shown), default=0) + 1
    return [f"{indent}{(k + ':').ljust(width)} {v}" for k, v in shown]


def describe(ftj: dict[str, Any], pods: list[dict[str, Any]], events: list[dict[str, Any]], now: datetime) -> str:
    meta, spec, status = ftj["metadata"], ftj.get("spec") or {}, ftj.get("status") or {}
    resources, strategy = spec.get("resources") or {}, spec.get("strategy") or {}
    reason, message = summary(status)
    params = status.get("parameters") or {}
    lines = _fields([
        ("Name", meta["name"]), ("Namespace", meta.get("namespace")), ("Age", _age(ftj, now)),
        ("Model", (spec.get("model") or {}).get("source")), ("Task", spec.get("task")),
        ("Dataset", (spec.get("dataset") or {}).get("source")),
        ("Strategy", " ".join(f"{k}={v}" for k, v in strategy.items() if not isinstance(v, (dict, list)))),
        ("Resources", f"{resources.get('nodes', 1)} node(s) x {resources.get('gpus', 0)} GPU(s)"),
        ("Phase", status.get("phase") or "-"), ("Reason", reason), ("Message", message),
        ("Progress", progress_bar(status.get("progress"))),
        ("Parameters", f"{params['trainable']:,} trainable of {params['total']:,}" if params else None),
        ("Metrics", ", ".join(f"{k}={v:.4g}" for k, v in sorted((status.get("metrics") or {}).items()))),
        ("Checkpoint", (status.get("checkpoint") or {}).get("location")),
        ("Output", (status.get("output") or {}).get("location")),
    ])
    lines.append("Conditions:")
    for condition in status.get("conditions") or ():
        lines.append(f"  {condition['type']:<10} {condition['status']:<6} {condition.get('reason', '')}")
    lines.append(f"Attempts: {status.get('attempts') or 0}")
    for source in log_sources(status.get("attempts") or 0, pods):
        where = f"pod {source.pod} {source.phase}" if source.pod else "no pod"
        lines.append(f"  {source.attempt}  {attempt_name(meta['name'], source.attempt)}  rank {source.rank}  {where}")
    lines.append("Events:" if events else "Events: <none>")
    for event in sorted(events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or ""):
        when = event.get("lastTimestamp") or event.get("eventTime")
        age = duration((now - parse_time(when)).total_seconds()) if when else "-"
        lines.append(f"  {age:>6}  {event.get('type', ''):<8} {event.get('reason', ''):<16} {event.get('message', '')}")
    return "\n".join(lines) + "\n"
