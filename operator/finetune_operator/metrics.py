"""The operator's own Prometheus metrics, served on settings.metrics_port (the trainers serve theirs)."""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from finetune_operator.api import Phase

RECONCILES = Counter(
    "finetune_operator_reconcile_total", "Reconciles of FineTuneJobs, by result (success or error).", ["result"])
RECONCILE_SECONDS = Histogram(
    "finetune_operator_reconcile_duration_seconds", "Time one reconcile of a FineTuneJob takes.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
ATTEMPTS = Counter("finetune_operator_attempts_total", "Trainer attempts (batch/v1 Jobs) created.")
RESTARTS = Counter(
    "finetune_operator_restarts_total", "Attempts created to retry a failed one (attempt 2 and later).")


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
