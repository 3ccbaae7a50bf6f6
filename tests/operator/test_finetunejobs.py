"""The watch-fed copies of FineTuneJobs (finetunejobs.py): newer versions only, a newer status alone is no news,
a deletion is not undone by a late answer, and what no pass reads is not kept."""

from __future__ import annotations

from api_objects import NS, ftj
from finetune_operator.finetunejobs import FineTuneJobs
from finetune_operator.watched import TOMBSTONE_SECONDS


def at(body: dict, version: int, **status) -> dict:
    return {**body, "metadata": {**body["metadata"], "resourceVersion": str(version)},
            "status": {**body["status"], **status}}


def test_only_a_newer_version_replaces_the_copy_and_only_spec_or_deletion_asks_for_a_pass():
    store = FineTuneJobs()
    first = at(ftj(), 10)
    first["metadata"]["managedFields"] = [{"manager": "kubectl"}] * 10
    assert store.put(first)
    assert "managedFields" not in store.get(NS, "mrpc")["metadata"]  # no pass reads it
    assert first["metadata"]["managedFields"]  # the caller's body is left alone
    echo = at(first, 11, phase="Pending")  # the watch showed our status PATCH before its answer came back
    assert not store.put(echo)  # kept, but a newer status alone asks for no pass
    assert store.get(NS, "mrpc")["status"]["phase"] == "Pending"
    assert not store.put(at(first, 10))  # an older event still on its way: not kept
    assert store.get(NS, "mrpc")["metadata"]["resourceVersion"] == "11"
    edited = at(echo, 12)
    edited["metadata"]["generation"] = 2
    assert store.put(edited)  # a spec edit: a pass
    deleting = at(edited, 13)
    deleting["metadata"]["deletionTimestamp"] = "2025-01-01T12:00:00Z"
    assert store.put(deleting)


def test_a_deleted_finetunejob_is_not_brought_back_and_a_new_one_of_that_name_is_taken():
    now = [0.0]
    store = FineTuneJobs(clock=lambda: now[0])
    old = at(ftj(), 10)
    store.put(old)
    store.remove(at(old, 11))
    assert store.get(NS, "mrpc") is None
    assert not store.put(old)  # a GET answered before the deletion
    again = at(ftj(), 5)
    again["metadata"]["uid"] = "uid-new"
    assert store.put(again) and store.get(NS, "mrpc")["metadata"]["uid"] == "uid-new"
    now[0] = TOMBSTONE_SECONDS + 1
    store.remove(at(again, 6))  # tombstones older than any request in flight are let go
    store.forget(NS, "mrpc")
    assert len(store) == 0
