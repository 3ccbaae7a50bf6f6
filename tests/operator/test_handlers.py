"""The Kopf wiring (handlers.py): Kopf watches the FineTuneJobs only (reflector.py watches the children), keeps no
bookkeeping on them, and a FineTuneJob event queues a pass only when its copy is newer than the one held."""

from __future__ import annotations

import asyncio

import kopf
from kopf._cogs.structs.references import Resource

from api_objects import NS, ftj
from finetune_operator import handlers
from finetune_operator.children import Children
from finetune_operator.finetunejobs import FineTuneJobs
from finetune_operator.settings import Settings


class Kube:
    def crd_installed(self):
        return True


class Reconciler:
    settings, kube = Settings(workers=24), Kube()

    def __init__(self):
        self.finetunejobs, self.forgotten = FineTuneJobs(), []

    def forget(self, namespace, name):
        self.forgotten.append((namespace, name))


class Queue(list):
    add = list.append


class Poller:
    def track(self, *_):
        pass

    def forget(self, *_):
        pass


def test_kopf_keeps_no_record_of_handled_specs():
    settings = kopf.OperatorSettings()
    handlers.configure(settings, kopf.Memo(reconciler=Reconciler(), children=Children()))
    body = kopf.Body(ftj())
    assert settings.persistence.diffbase_storage.build(body=body) is None  # no deep copy of every event's body


def test_kopf_watches_only_finetunejobs_with_watch_handlers_so_it_writes_nothing_to_them():
    registry = kopf.OperatorRegistry()
    handlers.register(registry)
    finetunejobs = Resource("finetune.io", "v1alpha1", "finetunejobs")
    assert registry._watching.has_handlers(resource=finetunejobs)
    assert not registry._changing.has_handlers(resource=finetunejobs)  # on.create/update/resume patch annotations
    for child in (Resource("batch", "v1", "jobs"), Resource("", "v1", "pods")):
        assert not registry._watching.has_handlers(resource=child)


def test_a_finetunejob_event_queues_a_pass_only_when_its_copy_is_newer():
    memo = kopf.Memo(reconciler=Reconciler(), poller=Poller(), new_passes=Queue())

    def seen(type_, body):
        meta = body["metadata"]
        asyncio.run(handlers.finetunejob_seen(type_, kopf.Body(body), meta["name"], meta["namespace"], body["spec"],
                                              body["status"], memo))

    first = ftj()
    seen(None, first)  # the watch's listing at startup: every FineTuneJob gets a pass (what on.resume gave)
    assert memo.new_passes == [(NS, "mrpc")]
    ours = {**first, "metadata": {**first["metadata"], "resourceVersion": "7"}, "status": {"phase": "Pending"}}
    seen("MODIFIED", ours)  # our own status PATCH's echo on the watch (maybe before its answer)
    memo.reconciler.finetunejobs.put(ours)
    assert len(memo.new_passes) == 1
    edited = {**ours, "metadata": {**ours["metadata"], "resourceVersion": "8", "generation": 2}}
    seen("MODIFIED", edited)  # a spec edit
    assert len(memo.new_passes) == 2
    seen("DELETED", edited)
    assert memo.reconciler.finetunejobs.get(*memo.new_passes[0]) is None and memo.reconciler.forgotten
