"""The children's watches (reflector.py) against a scripted API: LIST then WATCH into the store, passes queued only
for changes a pass reads, a gap closed by LISTing again, failures waited out, and a stop that does not wait for the
server. Against the real API server: tests/cluster/test_reflector_cluster.py, and a restarted API server in
tests/reliability/test_faults.py."""

from __future__ import annotations

import threading

from api_objects import NS, job, pod
from finetune_operator.children import Children
from finetune_operator.kube import NotFound, Unavailable
from finetune_operator.reflector import Reflector, Reflectors


class Stream:
    """A watch answer: its events, then the server ends it; ``hold`` keeps it open until closed."""

    def __init__(self, events, hold=False):
        self.events, self.hold, self.closed = events, hold, threading.Event()

    def __iter__(self):
        yield from self.events
        if self.hold:
            self.closed.wait(10)
            raise Unavailable(0, "the watch was closed")

    def close(self):
        self.closed.set()


class API:
    """Answers LISTs and watches from scripts; after the last watch script, stops the reflector."""

    def __init__(self, lists, watches):
        self.lists, self.watches, self.calls = list(lists), list(watches), []
        self.reflector: Reflector | None = None

    def list_collection(self, path, selector):
        self.calls.append("LIST")
        answer = self.lists.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def watch(self, path, selector, version, timeout_seconds):
        self.calls.append(f"WATCH {version}")
        if not self.watches:
            self.reflector.stop()
            return Stream([])
        answer = self.watches.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def event(type_, body):
    return {"type": type_, "object": body}


def run(api, kind="Pod"):
    children = Children()
    other = "Job" if kind == "Pod" else "Pod"
    children.replace((other, None), [], children.mark())  # the other kind's watch has listed (nothing)
    queued, waits = [], []
    reflector = Reflector(api, (kind, None), children, queued.append, delays=lambda: iter([1, 2, 4]))
    reflector._stopped.wait = lambda delay: waits.append(delay)  # no sleeping in tests
    api.reflector = reflector
    reflector.run()
    return children, queued, waits


def test_it_lists_then_watches_from_the_lists_version_and_queues_passes_only_for_what_a_pass_reads():
    api = API(lists=[([pod(rv=10)], "10")], watches=[Stream([
        event("MODIFIED", pod(rv=11, heartbeat="2025-01-01T12:00:30Z")),  # a timestamp: nothing a pass reads
        event("ADDED", pod("other", rv=12)),
        event("MODIFIED", pod(rv=13, phase="Succeeded", ready=False)),
    ])])
    children, queued, _ = run(api)
    assert api.calls == ["LIST", "WATCH 10", "WATCH 13"]  # the server ended the first watch: on from the last seen
    assert queued == [(NS, "other"), (NS, "mrpc")]  # the startup LIST queues none: the FineTuneJobs' listing does
    assert children.get(NS, "mrpc")[1][0]["status"]["phase"] == "Succeeded"


def test_a_bookmark_moves_the_version_on_and_queues_nothing():
    bookmark = {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "40"}}
    api = API(lists=[([], "30")], watches=[Stream([event("BOOKMARK", bookmark)])])
    _, queued, _ = run(api)
    assert api.calls == ["LIST", "WATCH 30", "WATCH 40"] and queued == []


def test_gone_lists_again_and_what_changed_in_the_gap_gets_its_pass():
    gone = event("ERROR", {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"})
    api = API(lists=[([job(rv=5), job("deleted", rv=6)], "6"), ([job(rv=5)], "90")],
              watches=[Stream([gone]), NotFound(410, "too old resource version")])
    api.lists.append(([job(rv=5)], "91"))
    children, queued, _ = run(api, kind="Job")
    assert api.calls == ["LIST", "WATCH 6", "LIST", "WATCH 90", "LIST", "WATCH 91"]
    assert queued == [(NS, "deleted")]  # its DELETED event fell in the gap; mrpc's Job did not change
    assert children.get(NS, "deleted") == ([], [])


def test_failures_are_waited_out_with_growing_delays_and_the_watch_goes_on_from_where_it_was():
    api = API(lists=[Unavailable(503, "etcd leader changed"), ([pod(rv=10)], "10")],
              watches=[Unavailable(0, "connection refused"), Stream([event("MODIFIED", pod(rv=20, phase="Failed"))])])
    children, queued, waits = run(api)
    assert api.calls == ["LIST", "LIST", "WATCH 10", "WATCH 10", "WATCH 20"]
    # A successful LIST starts the delays again; a watch that ends at once (as these scripted ones do) is waited
    # after as a failure is, so the delays grow on (the last wait is the stop's, which returns at once).
    assert waits == [1, 1, 2, 4]
    assert queued == [(NS, "mrpc")]


def test_stop_ends_a_watch_blocked_on_a_quiet_stream():
    api = API(lists=[([], "1")], watches=[Stream([], hold=True)] * 3)
    reflector = Reflector(api, ("Pod", None), Children(), lambda owner: None)
    api.reflector = reflector
    thread = threading.Thread(target=reflector.run)
    thread.start()
    while not api.calls[1:]:
        thread.join(0.01)
    reflector.stop()
    thread.join(5)
    assert not thread.is_alive() and api.calls == ["LIST", "WATCH 1"]


def test_a_start_waits_for_the_first_lists_but_not_for_ever():
    class Down:
        def list_collection(self, path, selector):
            raise Unavailable(503, "the API server is starting")

    watches = Reflectors(Down(), (NS,), Children(), lambda owner: None)
    watches.start()
    try:
        assert not watches.wait_listed(0.2)
    finally:
        watches.stop()
    assert not any(t.is_alive() for t in threading.enumerate() if t.name.startswith("finetune-watch"))
