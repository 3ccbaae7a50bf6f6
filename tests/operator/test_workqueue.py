"""The queue of passes that children's watch events ask for (workqueue.py): one per job however many events,
again after a running pass when its job changed meanwhile, never two at once for one job; and a queue that yields
to another (the creations) until that one has been idle for its settle time, for at most its patience."""

from __future__ import annotations

import contextlib
import threading
import time

from finetune_operator.workqueue import WorkQueue


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_events_for_a_job_that_waits_in_the_queue_make_one_pass():
    runs, gate = [], threading.Event()
    queue = WorkQueue(lambda ns, name: (gate.wait(5), runs.append(name)), workers=1)
    queue.start()
    try:
        queue.add(("ml", "busy"))  # occupies the only worker until the gate opens
        wait_until(lambda: len(queue) == 0)
        for _ in range(5):
            queue.add(("ml", "a"))
            queue.add(("ml", "b"))
        assert len(queue) == 2
        gate.set()
        wait_until(lambda: len(runs) == 3)
        time.sleep(0.05)
        assert runs == ["busy", "a", "b"]
    finally:
        queue.stop()


def test_a_job_that_changes_while_its_pass_runs_runs_again_after_it_never_alongside():
    running, overlaps, runs = set(), [], []
    started, release = threading.Event(), threading.Event()

    def run(ns, name):
        if name in running:
            overlaps.append(name)
        running.add(name)
        started.set()
        release.wait(5)
        runs.append(name)
        running.discard(name)

    queue = WorkQueue(run, workers=4)
    queue.start()
    try:
        queue.add(("ml", "a"))
        started.wait(5)
        queue.add(("ml", "a"))  # while it runs: once more afterwards, on any worker
        queue.add(("ml", "a"))
        time.sleep(0.05)
        assert runs == [] and overlaps == []
        release.set()
        wait_until(lambda: len(runs) == 2)
        time.sleep(0.05)
        assert runs == ["a", "a"] and overlaps == []
    finally:
        queue.stop()


def test_a_failing_pass_does_not_end_the_worker():
    runs = []

    def run(ns, name):
        runs.append(name)
        if name == "bad":
            raise RuntimeError("bug")

    queue = WorkQueue(run, workers=1)
    queue.start()
    try:
        queue.add(("ml", "bad"))
        queue.add(("ml", "good"))
        wait_until(lambda: runs == ["bad", "good"])
    finally:
        queue.stop()


@contextlib.contextmanager
def creations_and_reports(create, report, patience, settle=0.0):
    """The runner's two queues: reports (children's passes) yield to creations (new FineTuneJobs' passes)."""
    creations = WorkQueue(create, workers=2, name="new")
    reports = WorkQueue(report, workers=2, yields_to=creations, patience=patience, settle=settle)
    creations.start()
    reports.start()
    try:
        yield creations, reports
    finally:
        creations.stop()
        reports.stop()


def test_a_queue_that_yields_waits_while_the_other_is_busy_and_runs_once_it_falls_idle():
    runs, gate = [], threading.Event()
    with creations_and_reports(lambda ns, name: (gate.wait(5), runs.append(name)),
                               lambda ns, name: runs.append(name), patience=30) as (creations, reports):
        creations.add(("ml", "create-a"))
        wait_until(creations.busy)
        reports.add(("ml", "report-b"))
        time.sleep(0.1)
        assert runs == []  # held back while a creation runs, though its workers are free
        gate.set()
        wait_until(lambda: len(runs) == 2)
        assert runs == ["create-a", "report-b"]


def test_a_queue_that_yields_waits_no_longer_than_its_patience():
    runs, gate = [], threading.Event()
    with creations_and_reports(lambda ns, name: gate.wait(5), lambda ns, name: runs.append(name),
                               patience=0.2) as (creations, reports):
        creations.add(("ml", "create-a"))
        wait_until(creations.busy)
        started = time.monotonic()
        reports.add(("ml", "report-b"))
        wait_until(lambda: runs == ["report-b"])
        assert 0.15 < time.monotonic() - started < 2 and creations.busy()  # ran while the creation still did
        gate.set()


def test_after_a_burst_a_queue_that_yields_waits_until_the_other_has_been_idle_for_its_settle_time():
    runs, ends, gate = [], [], threading.Event()
    with creations_and_reports(lambda ns, name: (gate.wait(5), ends.append(time.monotonic())),
                               lambda ns, name: runs.append((name, time.monotonic())),
                               patience=30, settle=1.0) as (creations, reports):
        for i in range(5):  # 2 workers: 3 wait, a burst
            creations.add(("ml", f"create-{i}"))
        reports.add(("ml", "report-a"))
        gate.set()
        wait_until(lambda: len(runs) == 1)
        assert len(ends) == 5 and runs[0][1] - max(ends) >= 1.0
        # The next creations are no burst: a report queued meanwhile runs when they end, without the settle time.
        creations.add(("ml", "create-lone"))
        reports.add(("ml", "report-b"))
        wait_until(lambda: len(runs) == 2)
        assert runs[1][1] - ends[-1] < 0.5


def test_a_queue_that_yields_waits_no_longer_than_its_patience_for_the_other_to_settle():
    runs, gate = [], threading.Event()
    with creations_and_reports(lambda ns, name: gate.wait(5), lambda ns, name: runs.append(time.monotonic()),
                               patience=0.2, settle=30) as (creations, reports):
        for i in range(5):
            creations.add(("ml", f"create-{i}"))
        gate.set()
        wait_until(lambda: not creations.busy())
        queued = time.monotonic()
        reports.add(("ml", "report-b"))
        wait_until(lambda: len(runs) == 1)
        assert 0.15 < runs[0] - queued < 2
