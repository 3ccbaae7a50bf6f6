"""The operator's children in memory: every batch/v1 Job and pod it manages, kept from the watches.

Why: a pass used to LIST its FineTuneJob's Jobs and pods by label, two server-side label scans per pass, O(N) each
and O(N^2) for N jobs (BENCHMARKS.md §5). The operator watches those Jobs and pods anyway, because their changes
trigger passes; keeping what the watches deliver lets a pass read memory instead.

What is kept: trimmed copies (observed.trim_job/trim_pod, only what observed.py reads), filed under (namespace,
the ``finetune.io/job`` label), with uid and resourceVersion beside them. ``apply`` says whether an event changed
the trimmed copy, so the many status updates nothing here reads (a Job's counters, a pod's timestamps) trigger no
pass.

How fresh it is, and what covers the gaps:

- Each watch stream is in order, and reflector.py applies an event before it queues the pass the event asks for,
  so that pass sees at least that event's object.
- Jobs and pods come on two streams: a pass may see a Job Complete before its pod's termination message (which
  holds the trainer's summary), or a Job the status records may not have arrived yet (just created, or the cache
  is being filled after a restart). ``behind`` names those cases and the reconciler then LISTs once, a consistent
  read, and ``seed``s the answer back.
- A LIST answer may be older than events already applied, and events still in flight may be older than a LIST
  answer: a copy is only replaced by a higher resourceVersion, and the uid of a deleted object is remembered for
  longer than a LIST can be in flight, so a late answer cannot bring it back (watched.py).
- The watches are reflector.py's, one per kind (and namespace): each LISTs before it watches, and again when its
  watch cannot go on (410 Gone, a long outage), and an object deleted meanwhile gets no DELETED event. So each
  LIST answer ``replace``s what the store holds of that kind and namespace, which drops what the API no longer
  has. Until every watch has listed once, ``get`` answers None and every pass LISTs its children.

Why not Kopf's indexes (``@kopf.index``), fed by Kopf's watches (which reflector.py replaced): an index holds whatever its function
returns per object and hands it to Kopf's handlers, but the store has to do three things an index does not. It
tells which events changed what a pass reads (at 500 FineTuneJobs most Job and pod events change nothing, and each
would otherwise queue a pass); it takes a LIST answer or a just-created Job in (``seed``) and never lets an older
copy replace a newer one, which is what makes the LIST fallback safe; and it is read from the event passes' and the
poller's threads, outside Kopf's handlers. An index would need all three built around it, and the measured
benefit of this store (no LISTs, 115 MiB at 500 FineTuneJobs, BENCHMARKS.md §5) comes from exactly those parts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from finetune_operator.lifecycle import TERMINAL
from finetune_operator.observed import attempt_number, trim_job, trim_pod
from finetune_operator.names import LABEL_FINETUNEJOB
from finetune_operator.watched import Tombstones, older, resource_version

JOB, POD = "Job", "Pod"
_TRIM = {JOB: trim_job, POD: trim_pod}

Owner = tuple[str, str]  # (namespace, FineTuneJob name)
_Ident = tuple[str, str, str]  # (kind, namespace, name)
Scope = tuple[str, str | None]  # (kind, namespace) one watch covers; namespace None: every namespace


@dataclass(frozen=True)
class _Entry:
    owner: Owner
    uid: str | None
    version: int | None  # metadata.resourceVersion
    body: dict[str, Any]  # trimmed; never changed in place, so readers may hold it without a copy
    seq: int  # when it was last written (Children._seq), for replace()


def _ident(kind: str, body: dict[str, Any]) -> _Ident:
    meta = body.get("metadata") or {}
    return kind, meta.get("namespace") or "", meta.get("name") or ""


def scopes(namespaces: tuple[str, ...] = ()) -> list[Scope]:
    """What the watches cover: each kind in each of ``namespaces``, or in every namespace when there are none."""
    return [(kind, namespace) for kind in (JOB, POD) for namespace in namespaces or (None,)]


class Children:
    """Thread-safe: the watches' threads write; passes read and seed it from worker threads."""

    def __init__(self, namespaces: tuple[str, ...] = (), clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self._objects: dict[_Ident, _Entry] = {}
        self._by_owner: dict[Owner, set[_Ident]] = {}
        self._deleted = Tombstones()
        self._seq = 0
        self._unlisted = set(scopes(namespaces))  # scopes not replaced from a LIST yet: get answers None

    # ------------------------------------------------------------------------------------------ reads

    def get(self, namespace: str, name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        """The Jobs and pods of a FineTuneJob, trimmed; None until the first full sync, when nothing is known."""
        with self._lock:
            if self._unlisted:
                return None
            idents = self._by_owner.get((namespace, name), ())
            jobs = [self._objects[i].body for i in idents if i[0] == JOB]
            pods = [self._objects[i].body for i in idents if i[0] == POD]
        return jobs, pods

    def mark(self) -> int:
        """A point in the store's history, to pass to ``replace`` with the LIST answer requested after it."""
        with self._lock:
            return self._seq

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)

    # ------------------------------------------------------------------------------------------ writes

    def apply(self, kind: str, event_type: str, body: dict[str, Any]) -> Owner | None:
        """One watch event. Returns the FineTuneJob whose children changed in what observed.py reads, or None
        when nothing it reads changed (no pass needed)."""
        with self._lock:
            if event_type == "DELETED":
                return self._remove(kind, body)
            return self._put(kind, body)

    def seed(self, jobs: list[dict[str, Any]], pods: list[dict[str, Any]]) -> None:
        """What a LIST (or a create) answered: kept where it is newer than what is held."""
        with self._lock:
            for kind, items in ((JOB, jobs), (POD, pods)):
                for body in items:
                    self._put(kind, body)

    def replace(self, scope: Scope, items: list[dict[str, Any]], since: int) -> set[Owner]:
        """What a LIST of one watch's scope answered, requested after ``since = mark()``: like ``seed``, and what
        the answer lacks is dropped unless something wrote it after ``since`` (then it is newer than the answer).
        Returns the FineTuneJobs whose children changed in what observed.py reads."""
        kind, namespace = scope
        changed: set[Owner] = set()
        with self._lock:
            listed = set()
            for body in items:
                listed.add(_ident(kind, body))
                if owner := self._put(kind, body):
                    changed.add(owner)
            for ident, entry in list(self._objects.items()):
                if (ident[0] == kind and namespace in (None, ident[1]) and ident not in listed
                        and entry.seq <= since):
                    changed.add(self._drop(ident, entry))
            self._unlisted.discard(scope)
        return changed

    # ------------------------------------------------------------------------------------------ internals (locked)

    def _put(self, kind: str, body: dict[str, Any]) -> Owner | None:
        meta = body.get("metadata") or {}
        ident, uid, version = _ident(kind, body), meta.get("uid"), resource_version(body)
        owner_name = (meta.get("labels") or {}).get(LABEL_FINETUNEJOB)
        old = self._objects.get(ident)
        if uid in self._deleted:
            return None  # a LIST answer from before its deletion
        if old is not None and older(version, old.version):
            return None  # older than the copy held (a late LIST answer, or an event overtaken by one)
        if not owner_name:  # the label was removed: not ours any more
            return self._drop(ident, old) if old else None
        owner, trimmed = (ident[1], owner_name), _TRIM[kind](body)
        self._seq += 1
        if old is not None and old.owner != owner:
            self._unlink(ident, old.owner)
        self._objects[ident] = _Entry(owner, uid, version, trimmed, self._seq)
        self._by_owner.setdefault(owner, set()).add(ident)
        changed = old is None or old.owner != owner or old.body != trimmed
        return owner if changed else None

    def _remove(self, kind: str, body: dict[str, Any]) -> Owner | None:
        uid = (body.get("metadata") or {}).get("uid")
        self._deleted.add(uid, self.clock())
        ident = _ident(kind, body)
        old = self._objects.get(ident)
        if old is None or (uid and old.uid and uid != old.uid):
            return None  # unknown, or the late deletion of an earlier object of the same name
        return self._drop(ident, old)

    def _drop(self, ident: _Ident, entry: _Entry) -> Owner:
        self._seq += 1
        del self._objects[ident]
        self._unlink(ident, entry.owner)
        return entry.owner

    def _unlink(self, ident: _Ident, owner: Owner) -> None:
        idents = self._by_owner.get(owner)
        if idents is not None:
            idents.discard(ident)
            if not idents:
                del self._by_owner[owner]


# ---------------------------------------------------------------------------------------------- staleness

def _finished(job: dict[str, Any]) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


def behind(status: dict[str, Any], jobs: list[dict[str, Any]], pods: list[dict[str, Any]]) -> str | None:
    """Why the stored children may be behind the cluster where a pass's decision depends on them; None if not.

    Pure: ``status`` is the FineTuneJob's, ``jobs`` and ``pods`` what the store holds for it.
    """
    if status.get("phase") in TERMINAL:
        return None  # a finished FineTuneJob's decision does not read its children (lifecycle.finished)
    recorded = int(status.get("attempts") or 0)
    current = max((attempt_number(j) for j in jobs), default=0)
    if current < recorded:
        # Created by an earlier pass (or before a restart), and its watch event has not arrived yet.
        return f"the Job of attempt {recorded} is not in the store yet"
    if current:
        job = next(j for j in jobs if attempt_number(j) == current)
        mine = [p for p in pods if attempt_number(p) == current]
        if _finished(job) and (not mine or any((p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
                                               for p in mine)):
            # The Job controller saw the pods end; our pod stream may not have yet, and the end of a pod is
            # where the trainer's summary and the failure's cause are.
            return f"the Job of attempt {current} finished, its pods' ends are not in the store yet"
    return None
