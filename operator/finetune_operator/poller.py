"""Reconcile the FineTuneJobs that need the clock once per poll interval: progress from the trainer, deadlines, TTLs.

One loop for the whole operator instead of a Kopf timer per object, because Kopf guards each timer with a
finalizer: a FineTuneJob (and its namespace) could then not be deleted while the operator is down or after it
was uninstalled. The set of jobs to poll follows the FineTuneJob watch (handlers.finetunejob_seen); a pass that a
watch event started and that failed is run again on the next round (``retry``), as watch events are not retried.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from finetune_operator.kube import KubeError, Unavailable
from finetune_operator.api import Phase
from finetune_operator.lifecycle import TERMINAL
from finetune_operator.logs import UNAVAILABLE
from finetune_operator.reconciler import Reconciler

log = logging.getLogger(__name__)
# Polls in flight at once.
CONCURRENCY = 4


def needs_polling(spec: dict[str, Any], status: dict[str, Any]) -> bool:
    """Whether a job's next step can come from the clock or the trainer rather than from a watch event.

    Running: its progress is read from the trainer. A deadline (runPolicy.activeDeadlineSeconds) until the job
    finishes, and a TTL (ttlSecondsAfterFinished) once it has: lifecycle.deadline_exceeded and lifecycle.finished
    compare them with the clock, the only rules that read it. Pending with spec.queueName: why Kueue holds its Job
    is in Kueue's Workload, which the operator does not watch, and it changes without a Job event (Kueue writes
    why it cannot admit the Job after the Job exists); Kueue's admission and preemption do flip the Job's suspend
    flag, which is a Job event. Everything else (Pending, Suspended) moves on watch events of the FineTuneJob, its
    Jobs and its pods; polling hundreds of them only queued passes in front of the ones events asked for
    (BENCHMARKS.md §5).
    """
    run_policy = spec.get("runPolicy") or {}
    phase = status.get("phase")
    if phase in TERMINAL:
        return run_policy.get("ttlSecondsAfterFinished") is not None
    queued = phase == Phase.PENDING.value and bool(spec.get("queueName"))
    return phase == Phase.RUNNING.value or queued or run_policy.get("activeDeadlineSeconds") is not None


class Poller:
    def __init__(self, reconciler: Reconciler, interval: float, concurrency: int = CONCURRENCY):
        self.reconciler, self.interval, self.concurrency = reconciler, interval, concurrency
        self._keys: set[tuple[str, str]] = set()
        self._once: set[tuple[str, str]] = set()  # passes to run again once (see retry)
        self._lock = threading.Lock()

    def track(self, namespace: str, name: str, spec: dict[str, Any], status: dict[str, Any]) -> None:
        with self._lock:
            if needs_polling(spec, status):
                self._keys.add((namespace, name))
            else:
                self._keys.discard((namespace, name))

    def retry(self, namespace: str, name: str) -> None:
        """Run a pass of this job on the next round, polled or not: a pass a watch event started has failed."""
        with self._lock:
            self._once.add((namespace, name))

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._keys.discard((namespace, name))
            self._once.discard((namespace, name))

    async def run(self) -> None:
        # Bounds the threads a round takes at once; each poll may wait on a slow trainer endpoint.
        slots = asyncio.Semaphore(self.concurrency)
        while True:
            await asyncio.sleep(self.interval)
            with self._lock:
                keys = sorted(self._keys | self._once)
                self._once.clear()
            await asyncio.gather(*(self._poll(slots, namespace, name) for namespace, name in keys))

    async def _poll(self, slots: asyncio.Semaphore, namespace: str, name: str) -> None:
        async with slots:
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, lambda: self.reconciler.reconcile(namespace, name, poll=True))
                return
            except Unavailable as error:  # the next round tries again; logs.OutageFilter folds the repeats
                log.warning("%s: %s/%s: %s", UNAVAILABLE, namespace, name, error)
            except KubeError as error:
                log.warning("%s/%s: poll failed: %s", namespace, name, error)
            except Exception:  # a bug must not end the loop for every other job
                log.exception("%s/%s: poll failed", namespace, name)
            with self._lock:
                if (namespace, name) not in self._keys:  # a retried pass failed again: once more next round
                    self._once.add((namespace, name))
