"""Reconcile every active FineTuneJob once per poll interval: progress from the trainer, deadlines, TTLs.

One loop for the whole operator instead of a Kopf timer per object, because Kopf guards each timer with a
finalizer: a FineTuneJob (and its namespace) could then not be deleted while the operator is down or after it
was uninstalled. The set of jobs to poll follows the FineTuneJob watch (handlers.track_phase).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from finetune_operator.kube import KubeError, Unavailable
from finetune_operator.lifecycle import TERMINAL
from finetune_operator.logs import UNAVAILABLE
from finetune_operator.reconciler import Reconciler

log = logging.getLogger(__name__)


def needs_polling(spec: dict[str, Any], status: dict[str, Any]) -> bool:
    """Active jobs are polled for progress and their deadline; finished ones only while their TTL runs."""
    if status.get("phase") not in TERMINAL:
        return True
    return (spec.get("runPolicy") or {}).get("ttlSecondsAfterFinished") is not None


class Poller:
    def __init__(self, reconciler: Reconciler, interval: float, concurrency: int = 4):
        self.reconciler, self.interval, self.concurrency = reconciler, interval, concurrency
        self._keys: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def track(self, namespace: str, name: str, spec: dict[str, Any], status: dict[str, Any]) -> None:
        with self._lock:
            if needs_polling(spec, status):
                self._keys.add((namespace, name))
            else:
                self._keys.discard((namespace, name))

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._keys.discard((namespace, name))

    async def run(self) -> None:
        # Bounds the threads a round takes at once; each poll may wait on a slow trainer endpoint.
        slots = asyncio.Semaphore(self.concurrency)
        while True:
            await asyncio.sleep(self.interval)
            with self._lock:
                keys = sorted(self._keys)
            await asyncio.gather(*(self._poll(slots, namespace, name) for namespace, name in keys))

    async def _poll(self, slots: asyncio.Semaphore, namespace: str, name: str) -> None:
        async with slots:
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, lambda: self.reconciler.reconcile(namespace, name, poll=True))
            except Unavailable as error:  # the next round tries again; logs.OutageFilter folds the repeats
                log.warning("%s: %s/%s: %s", UNAVAILABLE, namespace, name, error)
            except KubeError as error:
                log.warning("%s/%s: poll failed: %s", namespace, name, error)
            except Exception:  # a bug must not end the loop for every other job
                log.exception("%s/%s: poll failed", namespace, name)
