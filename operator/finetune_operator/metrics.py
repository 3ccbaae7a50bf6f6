"""The operator's own Prometheus metrics, served on settings.metrics_port (the trainers serve theirs): reconciles,
attempts, FineTuneJobs by phase, and what FineTuneJobs used and cost (status.usage) for chargeback by namespace.

Names and labels are listed in docs/metrics.md. Labels stay bounded: ``namespace`` (so a panel or an alert can tie
reconcile errors and retries to a team's namespace), ``result``, ``phase``; never a FineTuneJob's name, which
would grow a series per job. No ``*_created`` series (timestamps no dashboard reads).
"""

from __future__ import annotations

import importlib.metadata
import platform
import threading

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics, start_http_server
from prometheus_client.core import GaugeMetricFamily

from finetune_operator.api import Phase

disable_created_metrics()

RECONCILES = Counter(
    "finetune_operator_reconcile_total", "Reconciles of FineTuneJobs, by namespace and result (success or error).",
    ["namespace", "result"])
RECONCILE_SECONDS = Histogram(
    "finetune_operator_reconcile_duration_seconds", "Time one reconcile of a FineTuneJob takes.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
ATTEMPTS = Counter(
    "finetune_operator_attempts_total", "Trainer attempts (batch/v1 Jobs) created, by namespace.", ["namespace"])
RETRIES = Counter(
    "finetune_operator_retries_total", "Attempts created to retry a failed one (attempt 2 and later), by namespace.",
    ["namespace"])
# What FineTuneJobs used (status.usage), for chargeback by namespace: each status write adds what it grew by. Base
# units: seconds of a requested GPU or CPU core, byte-seconds of requested memory.
REQUESTED = {
    "gpuHours": (Counter("finetune_operator_requested_gpu_seconds_total",
                         "GPU-seconds requested by trainer pods (every attempt), by namespace.", ["namespace"]), 3600),
    "cpuCoreHours": (Counter("finetune_operator_requested_cpu_seconds_total",
                             "CPU core-seconds requested by trainer pods (every attempt), by namespace.",
                             ["namespace"]), 3600),
    "memoryGibHours": (Counter("finetune_operator_requested_memory_byte_seconds_total",
                               "Byte-seconds of memory requested by trainer pods (every attempt), by namespace.",
                               ["namespace"]), 3600 * 2**30),
}
ESTIMATED_COST = Counter(
    "finetune_operator_estimated_cost_total", "status.usage.estimatedCost of FineTuneJobs (the chart's price table), "
    "by namespace and currency.", ["namespace", "currency"])
NOTIFICATIONS = Counter(
    "finetune_operator_notifications_total",
    "Notifications of FineTuneJob transitions by namespace and result: delivered (a 2xx), failed (given up after "
    "retries, or refused with a 4xx), dropped (the oldest waiting one, when a sink's queue was full).",
    ["namespace", "result"])
NOTIFICATION_RETRIES = Counter(
    "finetune_operator_notification_retries_total", "Delivery tries after a notification's first, by namespace.",
    ["namespace"])
NOTIFICATION_SECONDS = Histogram(
    "finetune_operator_notification_delivery_seconds",
    "From a transition to its sink's 2xx answer, retries included.",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800))
NOTIFICATIONS_QUEUED = Gauge(
    "finetune_operator_notifications_queued", "Notifications waiting for delivery, all sinks (bounded per sink).")
LEADER = Gauge(
    "finetune_operator_leader", "1 while this replica holds the leader election's Lease and reconciles (always, "
    "without leader election); 0 while it stands by.")
BUILD_INFO = Gauge(
    "finetune_operator_build_info", "Always 1; the labels say which operator build runs.", ["version", "python"])


def _version() -> str:
    try:
        return importlib.metadata.version("finetune-operator")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


BUILD_INFO.labels(_version(), platform.python_version()).set(1)


def namespace_seen(namespace: str) -> None:
    """Every namespaced series of a namespace at 0 from its first reconcile on, so that rates, ratios and alerts
    over them have a series before the first error or retry (an absent series would read as "no data")."""
    RECONCILES.labels(namespace, "success")
    RECONCILES.labels(namespace, "error")
    ATTEMPTS.labels(namespace)
    RETRIES.labels(namespace)
    for result in ("delivered", "failed", "dropped"):
        NOTIFICATIONS.labels(namespace, result)
    NOTIFICATION_RETRIES.labels(namespace)
    for counter, _ in REQUESTED.values():
        counter.labels(namespace)


def count_usage(namespace: str, before: dict | None, after: dict | None) -> None:
    """Add what a FineTuneJob's status.usage grew by in one status write (usage only grows: usage.py)."""
    before, after = before or {}, after or {}
    for key, (counter, per_unit) in REQUESTED.items():
        grown = after.get(key, 0) - before.get(key, 0)
        if grown > 0:
            counter.labels(namespace).inc(grown * per_unit)
    cost, old = after.get("estimatedCost"), before.get("estimatedCost")
    if cost:
        base = old["amount"] if old and old["currency"] == cost["currency"] else 0
        if cost["amount"] > base:
            ESTIMATED_COST.labels(namespace, cost["currency"]).inc(cost["amount"] - base)


class PhaseCollector:
    """finetune_operator_jobs{phase}: the FineTuneJobs the operator watches, by phase, as last seen."""

    def __init__(self) -> None:
        self._phases: dict[str, str] = {}
        self._lock = threading.Lock()

    def observe(self, key: str, phase: str | None) -> None:
        with self._lock:
            self._phases[key] = phase or Phase.PENDING.value  # not reconciled yet: waiting like Pending

    def forget(self, key: str) -> None:
        with self._lock:
            self._phases.pop(key, None)

    def collect(self):
        with self._lock:
            phases = list(self._phases.values())
        family = GaugeMetricFamily("finetune_operator_jobs", "FineTuneJobs by phase.", labels=["phase"])
        for phase in Phase:  # every phase, zeros included, so dashboards and alerts see a series
            family.add_metric([phase.value], phases.count(phase.value))
        yield family


FINETUNEJOBS = PhaseCollector()
REGISTRY.register(FINETUNEJOBS)


def serve(port: int) -> None:
    start_http_server(port)
