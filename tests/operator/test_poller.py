"""The poller (poller.py): which FineTuneJobs are polled, and a failed event pass run again until it succeeds."""

from __future__ import annotations

import asyncio

from finetune_operator.kube import Unavailable
from finetune_operator.poller import Poller, needs_polling


def test_finetunejobs_are_polled_only_where_the_clock_or_the_trainer_moves_them():
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
    # Why Kueue holds a queued job is in its Workload, which changes without a Job event.
    assert needs_polling({"queueName": "team-a"}, {"phase": "Pending"})
    assert not needs_polling({"queueName": "team-a"}, {"phase": "Succeeded"})


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
