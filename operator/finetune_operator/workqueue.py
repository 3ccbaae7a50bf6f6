"""Passes to run for the watch events of FineTuneJobs' children, by job: a job waits in the queue at most once.

Why not one pass per event: a pod is scheduled, starts, becomes ready and ends, and its Job's status follows each
step; when passes wait (hundreds of jobs at once), several of these events for one job arrive while its pass is
still queued. The pass reads the latest view from the store (children.py), so one pass covers them all. A job
whose children change while its pass runs is queued again and runs after it, so no change goes unseen. The queue
holds (namespace, name) keys, not the events' bodies, so a backlog costs little memory.

The runner keeps two: one for new and edited FineTuneJobs (their passes create Jobs) and one for their children's
events (and the first status write of a new job, reconciler.py). The second ``yields_to`` the first: its workers
take no key while the first has passes waiting or running, nor, after a burst (more keys waiting than it has
workers), until it has been idle for ``settle`` seconds; a key waits so at most ``patience`` seconds from when it
was queued. Why: when hundreds of FineTuneJobs arrive at once, both would otherwise share one saturated API server,
and the creations would wait for status writes of jobs that already run; apply -> Job is what a user waits for, and
what a status write reports is not lost by waiting (the pass reads the latest view). The settle time is for the Jobs
just made: a burst of status writes the moment the last one is created held back its delivery to the API server's
other watchers (the Job controller, which makes its pods, among them) by up to 1.7 s (BENCHMARKS.md §5). Only after
a burst: a lone new job's first status write comes at once, before its pod runs, so it still reports (and notifies)
Pending. The patience bounds how long a stream of creations can hold the reports back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, FineTuneJob name)


class WorkQueue:
    def __init__(self, run: Callable[[str, str], None], workers: int, name: str = "finetune-pass",
                 yields_to: WorkQueue | None = None, patience: float = 30.0, settle: float = 0.0):
        self._run, self._workers, self._name = run, workers, name
        self._yields_to, self._patience, self._settle = yields_to, patience, settle
        # Read by the queues that yield to this one: when its last pass ended and nothing was left, and whether it
        # had more keys waiting than workers since it was last idle (a burst).
        self._idle_at = float("-inf")
        self._burst = self._burst_before_idle = False
        self._yielding: list[WorkQueue] = []  # queues that yield to this one: woken when it falls idle
        if yields_to is not None:
            yields_to._yielding.append(self)
        self._cond = threading.Condition()
        self._order: deque[Key] = deque()
        self._queued: set[Key] = set()
        self._running: set[Key] = set()
        self._again: set[Key] = set()  # changed while its pass ran: queue it again when that pass ends
        self._added: dict[Key, float] = {}  # when each waiting key was queued (its patience's clock)
        self._threads: list[threading.Thread] = []
        self._stopped = False

    def add(self, key: Key) -> None:
        with self._cond:
            if key in self._running:
                self._again.add(key)
            elif key not in self._queued:
                self._enqueue(key)

    def _enqueue(self, key: Key) -> None:  # with the lock held
        self._queued.add(key)
        self._order.append(key)
        self._added[key] = time.monotonic()
        self._burst = self._burst or len(self._order) > self._workers
        self._cond.notify()

    def __len__(self) -> int:
        """Keys waiting (not those running)."""
        with self._cond:
            return len(self._order)

    def busy(self) -> bool:
        # Read without the lock (the queue that yields holds its own): a stale answer at worst lets one pass start
        # early or wait until the wake-up that follows every change to idle.
        return bool(self._order or self._running)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _wait_left(self) -> float:
        """Seconds the next key should still wait for the queue this one yields to (0: take it now)."""
        if self._yields_to is None:
            return 0.0
        now = time.monotonic()
        patience_left = self._patience - (now - self._added[self._order[0]])
        if self._yields_to.busy():
            return patience_left
        if not self._yields_to._burst_before_idle:
            return 0.0
        return min(patience_left, self._settle - (now - self._yields_to._idle_at))

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
                while not self._stopped:
                    if not self._order:
                        self._cond.wait()
                        continue
                    left = self._wait_left()
                    if left <= 0:
                        break
                    self._cond.wait(left)  # woken when the other queue falls idle, or patience runs out
                if self._stopped:
                    return
                key = self._order.popleft()
                del self._added[key]
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
                        self._enqueue(key)
                    idle = not self.busy()
                    if idle:
                        self._idle_at = time.monotonic()
                        self._burst_before_idle, self._burst = self._burst, False
                if idle:  # outside this queue's lock: a yielding worker holds its own lock while it reads busy()
                    for queue in self._yielding:
                        queue._wake()
