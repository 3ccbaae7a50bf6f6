"""The operator's copy of each FineTuneJob, kept from the FineTuneJob watch and from the answers of its own status
PATCHes, so that a pass reads memory instead of GETting the FineTuneJob first (5.9 GETs per job, a fifth of every
API request at 500 jobs: BENCHMARKS.md §5).

Why a cached copy cannot drop a status change: the reconciler computes its status write as a merge patch against
the copy's status, and a copy that lagged behind the stored object would leave out keys changed since. So the
PATCH carries the copy's resourceVersion, a precondition the API server checks: if anything wrote the object
since (a spec edit not yet seen on the watch, another writer), the PATCH is refused (409) and the pass GETs and
runs again on the fresh object. A stale copy costs one request, never a change. The Event of a transition is
posted only after its status PATCH succeeded, so no transition is told twice.

Freshness: a copy is replaced only by a higher resourceVersion (watched.py), whether it comes from the watch or a
PATCH answer, so the watch echoing our own write changes nothing; ``put`` says when a pass is needed: a new
FineTuneJob (the listing at startup too), a spec edit (a new generation), a deletion, not a newer status alone. A deleted
FineTuneJob's uid is remembered, so a GET answered before the deletion cannot bring its copy back.

What is kept: the object as the API sent it, less ``metadata.managedFields`` (the largest part, which no pass
reads). Copies are never changed in place, so readers may hold one without copying it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from finetune_operator.watched import Tombstones, older, resource_version

Key = tuple[str, str]  # (namespace, name)


def _key(body: dict[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


def _meta(body: dict[str, Any], key: str) -> Any:
    return (body.get("metadata") or {}).get(key)


def _trim(body: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    return {**body, "metadata": meta}


class FineTuneJobs:
    """Thread-safe: watch events write on Kopf's event loop; passes read and write from worker threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self._copies: dict[Key, dict[str, Any]] = {}
        self._deleted = Tombstones()

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._copies.get((namespace, name))

    def __len__(self) -> int:
        with self._lock:
            return len(self._copies)

    def put(self, body: dict[str, Any]) -> bool:
        """Keep ``body`` (a watch event's object, a GET's or a PATCH's answer) if it is newer than the copy held.
        True when a pass must look at it: a FineTuneJob not held before, a new generation (spec edit) or a
        deletion. A newer status alone is kept and asks for none: the operator writes the status, and the watch
        may show its write before the PATCH's answer is back."""
        key, uid = _key(body), _meta(body, "uid")
        with self._lock:
            if uid in self._deleted:
                return False  # an answer from before its deletion
            held = self._copies.get(key)
            # Another uid under the same name: deleted and created again, and the new object wins.
            if held is not None and _meta(held, "uid") == uid:
                version, held_version = resource_version(body), resource_version(held)
                if older(version, held_version) or (version is not None and version == held_version):
                    return False  # an older version, or the same one (such as the watch's echo of our own write)
            self._copies[key] = _trim(body)
            return held is None or any(_meta(held, k) != _meta(body, k) for k in ("uid", "generation",
                                                                                    "deletionTimestamp"))

    def remove(self, body: dict[str, Any]) -> None:
        """The FineTuneJob was deleted (its watch's DELETED event)."""
        key, uid = _key(body), _meta(body, "uid")
        with self._lock:
            self._deleted.add(uid, self.clock())
            held = self._copies.get(key)
            if held is not None and _meta(held, "uid") in (uid, None):
                del self._copies[key]

    def forget(self, namespace: str, name: str) -> None:
        """Drop the copy (the API said it is gone, or behind): the next pass GETs."""
        with self._lock:
            self._copies.pop((namespace, name), None)
