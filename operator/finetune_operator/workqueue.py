"""Passes to run for the watch events of FineTuneJobs' children, by job: a job waits in the queue at most once.

Why not one pass per event: a pod is scheduled, starts, becomes ready and ends, and its Job's status follows each
step; when passes wait (hundreds of jobs at once), several of these events for one job arrive while its pass is
still queued. The pass reads the latest view from the store (children.py), so one pass covers them all. A job
whose children change while its pass runs is queued again and runs after it, so no change goes unseen. The queue
holds (namespace, name) keys, not the events' bodies, so a backlog costs little memory.

Its threads are its own, apart from Kopf's (which run the FineTuneJob handlers), so a new FineTuneJob's first
pass, the one that creates its Job, does not wait behind the backlog of other jobs' pod events.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, FineTuneJob name)


class WorkQueue:
    def __init__(self, run: Callable[[str, str], None], workers: int, name: str = "finetune-pass"):
        self._run, self._workers, self._name = run, workers, name
        self._cond = threading.Condition()
        self._order: deque[Key] = deque()
        self._queued: set[Key] = set()
        self._running: set[Key] = set()
        self._again: set[Key] = set()  # changed while its pass ran: queue it again when that pass ends
        self._threads: list[threading.Thread] = []
        self._stopped = False

    def add(self, key: Key) -> None:
        with self._cond:
            if key in self._running:
                self._again.add(key)
            elif key not in self._queued:
                self._queued.add(key)
                self._order.append(key)
                self._cond.notify()

    def __len__(self) -> int:
        """Keys waiting (not those running)."""
        with self._cond:
            return len(self._order)

    def start(self) -> None:
        with self._cond:
            self._stopped = False
        for i in range(self._workers - len(self._threads)):
            thread = threading.Thread(target=self._work, name=f"{self._name}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float | None = 5.0) -> None:
        """Let the running passes finish (up to ``timeout``, None: however long they take); what still waits runs
        when ``start`` is called again (the runner restarts Kopf with the same queue)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = [t for t in self._threads if t.is_alive()]

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._order and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                key = self._order.popleft()
                self._queued.discard(key)
                self._running.add(key)
            try:
                self._run(*key)
            except Exception:  # the runner handles API errors; a bug must not end the thread
                log.exception("%s/%s: pass failed", *key)
            finally:
                with self._cond:
                    self._running.discard(key)
                    if key in self._again:
                        self._again.discard(key)
                        self._queued.add(key)
                        self._order.append(key)
                        self._cond.notify()
