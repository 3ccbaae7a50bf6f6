"""The operator process's own behaviour: which jobs are polled, how Kopf is set up, how an API outage is logged."""

from __future__ import annotations

import asyncio
import logging

from finetune_operator.kube import Unavailable
from finetune_operator.logs import OutageFilter
from finetune_operator.poller import Poller, needs_polling


def test_jobs_are_polled_only_where_the_clock_or_the_trainer_moves_them():
    assert needs_polling({}, {"phase": "Running"})  # progress from the trainer
    assert not needs_polling({}, {})  # watch events move new, Pending and Suspended jobs
    assert not needs_polling({}, {"phase": "Pending"})
    assert not needs_polling({}, {"phase": "Suspended"})
    assert needs_polling({"runPolicy": {"activeDeadlineSeconds": 60}}, {"phase": "Pending"})  # the deadline
    assert needs_polling({"runPolicy": {"activeDeadlineSeconds": 60}}, {"phase": "Suspended"})
    assert not needs_polling({"runPolicy": {"activeDeadlineSeconds": 60}}, {"phase": "Failed"})
    assert not needs_polling({}, {"phase": "Succeeded"})
    assert not needs_polling({"runPolicy": {"backoffLimit": 1}}, {"phase": "Failed"})
    assert needs_polling({"runPolicy": {"ttlSecondsAfterFinished": 0}}, {"phase": "Failed"})  # the TTL


class _Reconciler:
    def __init__(self, fail: set[str]):
        self.fail, self.passes = fail, []

    def reconcile(self, namespace, name, poll=False):
        self.passes.append(name)
        if name in self.fail:
            raise Unavailable(0, "refused")


def test_a_failed_event_pass_is_run_again_by_the_poller_until_it_succeeds():
    reconciler = _Reconciler(fail={"flaky"})
    poller = Poller(reconciler, interval=0.01)
    poller.track("ml", "running", {}, {"phase": "Running"})
    poller.track("ml", "pending", {}, {"phase": "Pending"})
    poller.retry("ml", "flaky")
    poller.retry("ml", "once")

    async def rounds(n):
        task = asyncio.create_task(poller.run())
        while reconciler.passes.count("running") < n:
            await asyncio.sleep(0.005)
        task.cancel()

    asyncio.run(rounds(3))
    assert "pending" not in reconciler.passes
    assert reconciler.passes.count("once") == 1  # retried once, then left to watch events
    assert reconciler.passes.count("flaky") >= 2  # failed again: once more each round


def _record(message: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("kopf._cogs.clients.watching", level, __file__, 1, message, None, None)


def test_an_outage_is_one_clear_line_then_a_reminder_a_minute():
    clock = [0.0]
    outage = OutageFilter(every=60, clock=lambda: clock[0])
    retry = "Request attempt #1/9 failed; will retry: GET https://api/apis/x?watch=true -> ClientConnectorError(refused)"
    first = _record(retry)
    assert outage.filter(first)
    assert first.levelname == "WARNING"
    assert first.getMessage() == "Kubernetes API unavailable, retrying with backoff: ClientConnectorError(refused)"
    clock[0] = 5
    assert not outage.filter(_record(retry))
    assert not outage.filter(_record("Timer 'poll' failed temporarily: Kubernetes API unavailable: 0 refused"))
    assert outage.filter(_record("Handler 'x' failed with an exception."))  # other lines pass untouched
    clock[0] = 70
    assert outage.filter(_record(retry))


def test_kopf_runs_passes_on_the_configured_threads_and_watches_only_our_children():
    import kopf
    from kopf._cogs.structs.references import Resource

    from finetune_operator import handlers
    from finetune_operator.children import Children
    from finetune_operator.settings import Settings

    class Kube:
        def crd_installed(self):
            return True

    class Reconciler:
        settings, kube = Settings(workers=24), Kube()

    settings = kopf.OperatorSettings()
    handlers.configure(settings, kopf.Memo(reconciler=Reconciler(), children=Children()))
    assert settings.execution.max_workers == 24
    assert settings.persistence.consistency_timeout >= 30  # see handlers.configure
    selector = "app.kubernetes.io/managed-by=finetune-operator,finetune.io/job"
    for resource in (Resource("batch", "v1", "jobs"), Resource("", "v1", "pods")):
        assert list(settings.watching.label_selectors.collect(resource)) == [selector]
    assert not list(settings.watching.label_selectors.collect(Resource("finetune.io", "v1alpha1", "finetunejobs")))


def test_kopf_records_the_handled_spec_of_finetunejobs_only():
    import kopf

    from finetune_operator.handlers import DiffBaseStorage

    storage = DiffBaseStorage(prefix="finetune.io")
    pod = kopf.Body({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}})
    assert storage.build(body=pod) is None  # no deep copy of every pod and Job event
    ftj = kopf.Body({"apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob",
                     "metadata": {"name": "j", "labels": {"team": "a"}}, "spec": {"task": "x"}, "status": {"p": 1}})
    assert storage.build(body=ftj) == {"spec": {"task": "x"}, "metadata": {"labels": {"team": "a"}}}
