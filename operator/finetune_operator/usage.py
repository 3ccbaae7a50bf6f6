"""status.usage: what a FineTuneJob used, summed over every attempt (failed ones too), and what that cost.

Each pass recomputes the attempts whose pods it observes, from the pods themselves: a pod counts from its trainer
container's start to its finish (or now, while it runs), times what the container requested (GPUs, CPU cores, GiB
of memory). The trainer reports the work done (samples, tokens, MFU) in its exit summary, and while it runs the
scrape reads its counters. An attempt whose pods are gone (deleted, garbage-collected) keeps the entry the status
already holds, and no entry shrinks, so the sums only grow. Pure: the clock is the Observed's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from finetune_operator.api import AttemptUsage, UsageStatus, parse_time
from finetune_operator.observed import Observed, ObservedAttempt, ObservedPod
from finetune_operator.pricing import GIB, quantity

HOURS = ("gpuHours", "cpuCoreHours", "memoryGibHours")
# While a job runs, a change of its usage alone (the clock moved it) is written at most this often; any other
# change of the status writes it at once. At 2,000 running jobs a write per poll interval (15 s) would be 130 status
# PATCHes a second for clocks alone.
USAGE_WRITE_SECONDS = 60
COUNTS = ("samples", "tokens")
_CPU, _MEMORY = "cpu", "memory"


def pod_seconds(pod: ObservedPod, now: datetime) -> float:
    """The trainer container's lifetime: start to finish, or to now while it runs; 0 before it starts."""
    if not pod.started_at:
        return 0.0
    finished = pod.terminated.finished_at if pod.terminated and pod.terminated.finished_at else None
    end = parse_time(finished) if finished else now
    return max(0.0, (end - parse_time(pod.started_at)).total_seconds())


def _gpus(requests: dict[str, str], gpu_resource: str) -> float:
    return quantity(requests.get(gpu_resource, "0"))


def attempt_usage(attempt: ObservedAttempt, now: datetime, gpu_resource: str,
                  work: dict[str, Any] | None) -> dict[str, Any]:
    """One attempt's entry from its pods (and the work its trainer reported: summary or scrape)."""
    entry: dict[str, Any] = {"attempt": attempt.number, "seconds": 0.0, **{k: 0.0 for k in HOURS}}
    for pod in attempt.pods:
        seconds = pod_seconds(pod, now)
        hours = seconds / 3600
        entry["seconds"] = max(entry["seconds"], seconds)
        entry["gpuHours"] += _gpus(pod.requests, gpu_resource) * hours
        entry["cpuCoreHours"] += quantity(pod.requests.get(_CPU, "0")) * hours
        entry["memoryGibHours"] += quantity(pod.requests.get(_MEMORY, "0")) / GIB * hours
    entry.update({k: v for k, v in (work or {}).items() if k in (*COUNTS, "mfu") and v is not None})
    return entry


def _grown(previous: dict[str, Any] | None, current: dict[str, Any]) -> dict[str, Any]:
    """``current``, but never below what the status already held (a pod of the attempt may be gone by now)."""
    if not previous:
        return current
    merged = {**previous, **current}
    for key in ("seconds", *HOURS, *COUNTS):
        if key in previous or key in current:
            merged[key] = max(previous.get(key, 0), current.get(key, 0))
    return merged


def _work(o: Observed, attempt: ObservedAttempt) -> dict[str, Any] | None:
    rank0 = attempt.rank0
    summary = rank0.terminated.summary if rank0 and rank0.terminated else None
    if summary and summary.get("usage"):
        return summary["usage"]
    if attempt is o.current and o.scraped:
        return o.scraped.get("usage")
    return None


def next_usage(o: Observed, completion_time: str | None) -> dict[str, Any] | None:
    """status.usage after this pass (wire form), or None before anything ran."""
    previous = o.status.usage.wire() if o.status.usage else {}
    entries = {a["attempt"]: a for a in previous.get("attempts", [])}
    gpu_resource = (o.ftj.spec.resources.gpu_resource if o.ftj else None) or o.policy.gpu_resource
    for attempt in o.attempts:
        if attempt.pods:
            current = attempt_usage(attempt, o.now, gpu_resource, _work(o, attempt))
            entries[attempt.number] = _grown(entries.get(attempt.number), current)
    if not entries:
        return None
    attempts = [AttemptUsage.model_validate(_rounded(entries[n])).wire() for n in sorted(entries)]
    usage: dict[str, Any] = {k: round(sum(a.get(k, 0) for a in attempts), 6) for k in HOURS}
    usage.update({k: sum(a.get(k, 0) for a in attempts) for k in COUNTS})
    timed = [(a["mfu"], a["seconds"]) for a in attempts if a.get("mfu") is not None and a["seconds"]]
    if timed:
        usage["mfu"] = round(sum(m * s for m, s in timed) / sum(s for _, s in timed), 4)
    if o.status.start_time:
        end = parse_time(completion_time) if completion_time else o.now
        usage["wallSeconds"] = max(0, int((end - parse_time(o.status.start_time)).total_seconds()))
    if o.policy.prices is not None:
        selector = o.ftj.spec.resources.node_selector if o.ftj else None
        usage["estimatedCost"] = o.policy.prices.cost(selector, usage["gpuHours"], usage["cpuCoreHours"],
                                               usage["memoryGibHours"])
    usage["attempts"] = attempts
    return UsageStatus.model_validate(usage).wire()


def usage_due(written: dict[str, Any] | None, now: dict[str, Any] | None) -> bool:
    """Whether ``now`` (status.usage after a pass that changes nothing else) is worth a write over ``written``, the
    usage the status holds: nothing written yet, or written USAGE_WRITE_SECONDS of wall time ago."""
    if not written or not now:
        return True
    return now.get("wallSeconds", 0) - written.get("wallSeconds", 0) >= USAGE_WRITE_SECONDS


def _rounded(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 6) if isinstance(v, float) and k != "mfu" else v for k, v in entry.items()}
