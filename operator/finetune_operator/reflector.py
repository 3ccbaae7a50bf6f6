"""The watches of the operator's trainer Jobs and pods: LIST, then WATCH, into the store of children (children.py).

Why not Kopf's watches, which fed the store until 2026-12: the children's watches carry most of the operator's
events (a Job and its pod change several times each, per attempt), and Kopf spends on each event its JSON decode
and its per-event processing (matching handlers, a logger and a worker task per object) on its event loop, the
thread that also reads the FineTuneJobs' events. At 500 new FineTuneJobs that was most of the operator's CPU outside
its requests (BENCHMARKS.md §5), on a machine whose cores the API server needs for the Job creations. What the store
needs from a watch is little, and this module is that: client-go's reflector, reduced.

- LIST the scope (one kind in one namespace, or in all), in pages, and ``replace`` what the store holds of it: the
  store drops what the API no longer has, which is how a deletion missed while not watching is found;
- WATCH from the LIST's resourceVersion, with bookmarks, applying each event in order and queueing a pass for the
  FineTuneJob whose children changed in what a pass reads (``Children.apply`` says which);
- the server ends each watch after WATCH_SECONDS: watch again from the last resourceVersion seen; 410 Gone (older
  than the server keeps): LIST again; an API failure or a broken connection: wait (1, 2, 4 ... 30 s) and go on.

Each scope has a thread of its own: blocking reads release the GIL, decoding (orjson) holds it only briefly, and the
passes are queued, never run, here. The threads start and stop with Kopf (handlers.py), so only a leader watches,
and a leader's start waits for their first LISTs (``wait_listed``), so the passes that the FineTuneJobs' listing
queues read the store instead of LISTing their children one job at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from finetune_operator.children import Children, Owner, Scope, scopes
from finetune_operator.kube import EndlessBackoff, Kube, KubeError, NotFound, WatchStream, collection_path
from finetune_operator.names import CHILD_SELECTOR
from finetune_operator.watched import resource_version

log = logging.getLogger(__name__)

# How long the server keeps one watch open. client-go picks 5-10 min; the exact value only bounds how long a
# connection that died without a FIN (no read timeout fires before WATCH_SECONDS + kube.WATCH_GRACE) goes unnoticed.
WATCH_SECONDS = 300
# A watch the server ends sooner than this, without an error, is waited after as a failure is: an API server (or a
# proxy in front of it) that closes every watch at once must not get one request after another in a tight loop.
MIN_WATCH_SECONDS = 1.0
_API_VERSIONS = {"Job": "batch/v1", "Pod": "v1"}


class Gone(Exception):
    """The watch's resourceVersion is older than the API server keeps: LIST again."""


class Reflector:
    def __init__(self, kube: Kube, scope: Scope, children: Children, changed: Callable[[Owner], None],
                 delays: Callable[[], Iterator[float]] = lambda: iter(EndlessBackoff())):
        self.kube, self.scope, self.children, self.changed, self.delays = kube, scope, children, changed, delays
        kind, namespace = scope
        self.path = collection_path(_API_VERSIONS[kind], kind, namespace)
        self.name = f"{kind.lower()}s in {namespace}" if namespace else f"{kind.lower()}s"
        self._stopped = threading.Event()
        self._stream: WatchStream | None = None
        self._stream_lock = threading.Lock()
        self.listed = threading.Event()  # set by the first LIST's answer
        self.version: str | None = None  # the last resourceVersion seen; None: LIST next

    def run(self) -> None:
        delays = self.delays()
        while not self._stopped.is_set():
            try:
                if self.version is None:
                    self._list()
                    delays = self.delays()
                started = time.monotonic()
                self._watch()
                if time.monotonic() - started < MIN_WATCH_SECONDS:
                    self._stopped.wait(next(delays))
                else:
                    delays = self.delays()
            except Gone:
                log.debug("watch of %s: its resourceVersion is gone; listing again", self.name)
                self.version = None
            except KubeError as error:
                if self._stopped.is_set():
                    break
                delay = next(delays)
                log.warning("watch of %s: %s; going on in %.0fs", self.name, error, delay)
                self._stopped.wait(delay)
            except Exception:  # a bug must not end the watch for the life of the process
                log.exception("watch of %s failed", self.name)
                self.version = None
                self._stopped.wait(next(delays))

    def resume(self) -> None:
        self._stopped.clear()

    def stop(self) -> None:
        self._stopped.set()
        with self._stream_lock:
            if self._stream is not None:
                self._stream.close()

    def _list(self) -> None:
        since = self.children.mark()
        items, self.version = self.kube.list_collection(self.path, CHILD_SELECTOR)
        changed = self.children.replace(self.scope, items, since)
        if self.listed.is_set():  # a LIST after a gap: what changed meanwhile gets its pass (at startup the
            for owner in changed:  # FineTuneJobs' listing queues every job)
                self.changed(owner)
        self.listed.set()
        log.debug("watch of %s: listed %d", self.name, len(items))

    def _watch(self) -> None:
        try:
            stream = self.kube.watch(self.path, CHILD_SELECTOR, self.version or "", WATCH_SECONDS)
        except NotFound:  # 410 answered before the stream started
            raise Gone() from None
        with self._stream_lock:
            if self._stopped.is_set():
                stream.close()
            self._stream = stream
        try:
            for event in stream:
                self._event(event)
        finally:
            with self._stream_lock:
                self._stream = None

    def _event(self, event: dict[str, Any]) -> None:
        kind, body = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if body.get("code") == 410:
                raise Gone()
            raise KubeError(body.get("code") or 0, body.get("message") or "an error event on the watch")
        version = resource_version(body)
        if version is not None:
            self.version = str(version)
        if kind == "BOOKMARK":
            return
        owner = self.children.apply(self.scope[0], kind, body)
        if owner is not None:  # else nothing a pass reads has changed (most Job status updates, pod timestamps)
            self.changed(owner)


class Reflectors:
    """One reflector per scope of ``namespaces`` (children.scopes), each on a thread of its own. Started and stopped
    with Kopf, which the runner may run again: a restart watches on from the last resourceVersion seen."""

    def __init__(self, kube: Kube, namespaces: tuple[str, ...], children: Children, changed: Callable[[Owner], None]):
        self.reflectors = [Reflector(kube, scope, children, changed) for scope in scopes(namespaces)]
        self._threads: dict[int, threading.Thread] = {}

    def start(self) -> None:
        for i, reflector in enumerate(self.reflectors):
            if i in self._threads and self._threads[i].is_alive():
                continue  # still running (a stop that timed out)
            reflector.resume()
            thread = threading.Thread(target=reflector.run, name=f"finetune-watch {reflector.name}", daemon=True)
            thread.start()
            self._threads[i] = thread

    def wait_listed(self, timeout: float) -> bool:
        """Whether every scope was listed within ``timeout`` seconds (from now, for all of them together)."""
        deadline = time.monotonic() + timeout
        return all(r.listed.wait(max(0.0, deadline - time.monotonic())) for r in self.reflectors)

    def stop(self, timeout: float = 10.0) -> None:
        for reflector in self.reflectors:
            reflector.stop()
        for thread in self._threads.values():
            thread.join(timeout)
