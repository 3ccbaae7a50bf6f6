"""What the watch-fed stores (children.py, finetunejobs.py) share: which copy of an object is newer, and the
memory of deletions that keeps a late answer from bringing a deleted object back.

A store is fed from two sides that are not ordered with each other: watch events, and the answers of the
operator's own requests (a LIST, a create, a status PATCH). A copy therefore replaces the one held only when its
resourceVersion is higher (comparable integers on etcd-backed API servers, KEP-5504), and the uid of a deleted
object is remembered for longer than any request can be in flight.
"""

from __future__ import annotations

from typing import Any

# A deleted object's uid is remembered this long: longer than a request's answer can be in flight
# (kube.REQUEST_TIMEOUT).
TOMBSTONE_SECONDS = 120.0


def resource_version(body: dict[str, Any]) -> int | None:
    try:
        return int((body.get("metadata") or {}).get("resourceVersion"))
    except (TypeError, ValueError):
        return None  # not an etcd-backed API server: every copy counts as newer


def older(version: int | None, held: int | None) -> bool:
    """Whether a copy at ``version`` is older than the copy held at ``held`` (unknown versions are never older)."""
    return version is not None and held is not None and version < held


class Tombstones:
    """The uids of deleted objects, each kept TOMBSTONE_SECONDS. Not locked: the owning store's lock guards it."""

    def __init__(self) -> None:
        self._deleted: dict[str, float] = {}  # uid -> when its deletion was seen; insertion order is time order

    def __contains__(self, uid: str | None) -> bool:
        return uid is not None and uid in self._deleted

    def add(self, uid: str | None, now: float) -> None:
        if uid:
            self._deleted[uid] = now
        while self._deleted:  # forget tombstones no request in flight can need any more
            oldest = next(iter(self._deleted))
            if now - self._deleted[oldest] <= TOMBSTONE_SECONDS:
                break
            del self._deleted[oldest]
