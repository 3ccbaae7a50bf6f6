"""One pass over a FineTuneJob (reconciler.py) against a recorded fake of the API: what it reads (the store, a LIST
only when the store may lag), what it creates (nothing twice), what it writes and which Event it posts."""

from __future__ import annotations

import copy

from api_objects import NOW, NS, RESOURCE_VERSIONS, SUMMARY, ftj, job, pod, synced, terminated
from finetune_operator.children import Children
from finetune_operator.kube import Conflict, Invalid
from finetune_operator.lifecycle import CreateAttempt
from finetune_operator.reconciler import Reconciler
from finetune_operator.scrape import Scraper
from finetune_operator.settings import Settings


# ---------------------------------------------------------------------------------------------- a pass

def apply_merge_patch(old, patch):
    """RFC 7386, as the API server applies a merge patch."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(old) if isinstance(old, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = apply_merge_patch(merged.get(key), value)
    return merged


class FakeKube:
    """The API as the reconciler sees it: FineTuneJobs by name, children by label, every call recorded."""

    def __init__(self, *ftjs: dict):
        self.ftjs = {f["metadata"]["name"]: f for f in ftjs}
        self.jobs: list[dict] = []
        self.pods: list[dict] = []
        self.calls: list[str] = []
        self.events: list[dict] = []
        self.workloads: list[dict] = []

    def get_finetunejob(self, namespace, name):
        self.calls.append("GET")
        return copy.deepcopy(self.ftjs.get(name))

    def list_children(self, namespace, name):
        self.calls.append("LIST")
        mine = lambda o: o["metadata"]["labels"]["finetune.io/job"] == name  # noqa: E731
        return [j for j in self.jobs if mine(j)], [p for p in self.pods if mine(p)]

    def list_workloads(self, namespace, job_uid):
        self.calls.append(f"LIST Workloads {job_uid}")
        return [w for w in self.workloads if w["metadata"]["labels"]["kueue.x-k8s.io/job-uid"] == job_uid]

    def set_job_suspend(self, namespace, name, suspend):
        self.calls.append(f"PATCH Job suspend={suspend}")

    def create_if_absent(self, obj):
        self.calls.append(f"POST {obj['kind']}")
        if obj["kind"] != "Job":
            return obj
        if any(j["metadata"]["name"] == obj["metadata"]["name"] for j in self.jobs):
            return None
        created = {**obj, "metadata": {**obj["metadata"], "uid": "u", "resourceVersion": str(next(RESOURCE_VERSIONS)),
                                       "creationTimestamp": "2025-01-01T11:59:58Z"}}
        self.jobs.append(created)
        return created

    def patch_status(self, namespace, name, patch, resource_version=None):
        self.calls.append("PATCH")
        stored = self.ftjs[name]
        if resource_version is not None and resource_version != stored["metadata"]["resourceVersion"]:
            raise Conflict(409, "the object has been modified; please apply your changes to the latest version")
        stored["status"] = apply_merge_patch(stored["status"], patch)
        stored["metadata"]["resourceVersion"] = str(next(RESOURCE_VERSIONS))
        return copy.deepcopy(stored)

    def post_event(self, event):
        self.calls.append(f"EVENT {event['reason']}")
        self.events.append(event)


def reconciler(kube: FakeKube, children: Children) -> Reconciler:
    scraper = Scraper(9090, 1.0, min_interval=15)
    return Reconciler(kube, Settings(trainer_image="img"), scraper, children, clock=lambda: NOW)


def test_a_new_job_is_created_without_listing_and_the_next_pass_reads_only_memory():
    kube, children = FakeKube(ftj()), synced()
    r = reconciler(kube, children)
    decision = r.reconcile(NS, "mrpc")
    assert isinstance(decision.action, CreateAttempt)
    # Nothing held yet (no watch event in this test): one GET. The start of a run posts no Event (events.py).
    assert kube.calls == ["GET", "POST Job", "PATCH"]
    kube.calls.clear()
    # No watch event yet for the new Job (the store has it from the create's answer), nor for the status PATCH (the
    # copy has its answer): no request at all, and the attempt stays AttemptCreated until a pod starts.
    decision = r.reconcile(NS, "mrpc")
    assert kube.calls == [] and decision.reason == "AttemptCreated"
    assert [j["metadata"]["name"] for j in kube.jobs] == ["mrpc-a1"]
    children.seed([], [pod(rv=500)])
    r.reconcile(NS, "mrpc")
    assert kube.calls == ["PATCH"] and kube.ftjs["mrpc"]["status"]["phase"] == "Running"
    kube.calls.clear()
    children.seed([job(complete=True, rv=600)], [pod(phase="Succeeded", state=terminated(0, SUMMARY), rv=601)])
    r.reconcile(NS, "mrpc")
    assert kube.calls == ["PATCH", "EVENT TrainingSucceeded"]
    [event] = kube.events
    assert event["involvedObject"]["name"] == "mrpc" and event["type"] == "Normal"
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2025-01-01T12:00:00Z"  # the pass's clock


def test_a_new_jobs_first_pass_only_creates_and_leaves_its_status_to_the_next_pass():
    kube, children, later = FakeKube(ftj()), synced(), []
    r = reconciler(kube, children)
    r.write_later = later.append
    r.finetunejobs.put(copy.deepcopy(kube.ftjs["mrpc"]))  # the watch's copy
    decision = r.reconcile(NS, "mrpc")
    assert isinstance(decision.action, CreateAttempt)
    assert kube.calls == ["POST Job"] and later == [(NS, "mrpc")]  # apply -> Job is one request
    # The queued pass writes what the creating pass would have, from the Job's creation time.
    decision = r.reconcile(NS, "mrpc")
    assert kube.calls == ["POST Job", "PATCH"] and decision.reason == "AttemptCreated"
    status = kube.ftjs["mrpc"]["status"]
    assert status["phase"] == "Pending" and status["attempts"] == 1 and status["startTime"] == "2025-01-01T11:59:58Z"
    assert status["conditions"][0]["message"] == "created attempt 1 (Job mrpc-a1)"


def test_a_deferred_first_write_reports_what_the_pods_did_meanwhile_in_one_patch():
    kube, children, later = FakeKube(ftj()), synced(), []
    r = reconciler(kube, children)
    r.write_later = later.append
    r.finetunejobs.put(copy.deepcopy(kube.ftjs["mrpc"]))
    r.reconcile(NS, "mrpc")
    children.seed([], [pod(rv=500)])  # its pod ran before the queued pass did
    kube.calls.clear()
    r.reconcile(NS, "mrpc")
    assert kube.calls == ["PATCH"] and kube.ftjs["mrpc"]["status"]["phase"] == "Running"
    assert kube.ftjs["mrpc"]["status"]["startTime"] == "2025-01-01T11:59:58Z"


def test_a_job_the_api_server_refuses_fails_the_new_job_at_once():
    kube, children, later = FakeKube(ftj()), synced(), []

    def refuse(obj):
        kube.calls.append(f"POST {obj['kind']}")
        raise Invalid(422, 'Job.batch "mrpc-a1" is invalid: spec.template.spec.volumes[0].name: Invalid value')

    kube.create_if_absent = refuse
    r = reconciler(kube, children)
    r.write_later = later.append
    decision = r.reconcile(NS, "mrpc")
    assert decision.reason == "InvalidSpec" and later == []  # nothing was made: the status says why, now
    assert kube.calls[-2:] == ["PATCH", "EVENT InvalidSpec"] and kube.ftjs["mrpc"]["status"]["phase"] == "Failed"


def test_a_retry_writes_its_status_in_the_pass_that_creates_it():
    kube = FakeKube(ftj(status={"phase": "Running", "attempts": 1, "startTime": "2025-01-01T11:00:00Z"}))
    children, later = synced(job(failed="BackoffLimitExceeded", rv=600), pod(phase="Failed", state=terminated(1),
                                                                              rv=601)), []
    r = reconciler(kube, children)
    r.write_later = later.append
    r.reconcile(NS, "mrpc")
    assert later == [] and kube.calls[-3:] == ["POST Job", "PATCH", "EVENT Retrying"]


def test_a_copy_behind_the_stored_finetunejob_drops_nothing_it_reads_again_and_writes_once():
    kube, children = FakeKube(ftj(status={"phase": "Running", "attempts": 1, "startTime": "2025-01-01T11:00:00Z"})), \
        synced(job(complete=True, rv=600), pod(phase="Succeeded", state=terminated(0, SUMMARY), rv=601))
    r = reconciler(kube, children)
    r.finetunejobs.put(copy.deepcopy(kube.ftjs["mrpc"]))  # the copy the watch gave
    # Written since, and its watch event has not arrived: a key the stale copy does not have.
    kube.ftjs["mrpc"]["status"]["metrics"] = {"evalLoss": 0.5}
    kube.ftjs["mrpc"]["metadata"]["resourceVersion"] = "2"
    r.reconcile(NS, "mrpc")
    assert kube.calls == ["PATCH", "GET", "PATCH", "EVENT TrainingSucceeded"]  # refused, read, written once
    assert kube.ftjs["mrpc"]["status"]["metrics"]["evalLoss"] == 0.5 and kube.ftjs["mrpc"]["status"]["phase"] == \
        "Succeeded"
    kube.calls.clear()
    r.finetunejobs.put(copy.deepcopy(kube.ftjs["mrpc"]))  # the watch's echo changes nothing
    r.reconcile(NS, "mrpc")
    assert kube.calls == []


def test_a_pass_lists_once_when_the_store_lags_and_creates_nothing_twice():
    kube, children = FakeKube(ftj(status={"phase": "Pending", "attempts": 1})), synced()
    kube.jobs.append(job())  # made by a pass before a restart; its event has not arrived
    reconciler(kube, children).reconcile(NS, "mrpc")
    assert kube.calls[:2] == ["GET", "LIST"] and "POST Job" not in kube.calls
    kube.calls.clear()
    reconciler(kube, children).reconcile(NS, "mrpc")  # the LIST answer was kept
    assert "LIST" not in kube.calls


def test_a_job_that_completed_before_its_pod_ended_in_the_store_is_read_from_the_api():
    kube = FakeKube(ftj(status={"phase": "Running", "attempts": 1, "startTime": "2025-01-01T11:00:00Z"}))
    kube.jobs, kube.pods = [job(complete=True, rv=200)], [pod(phase="Succeeded", state=terminated(0, SUMMARY), rv=199)]
    children = synced(job(complete=True, rv=200), pod(rv=150))  # the pod's end is still on its way
    decision = reconciler(kube, children).reconcile(NS, "mrpc")
    assert "LIST" in kube.calls
    assert decision.phase.value == "Succeeded" and decision.summary["metrics"] == {"trainLoss": 0.3}
    assert kube.ftjs["mrpc"]["status"]["output"] == {"location": "pvc://ckpt/run"}


def test_until_the_first_sync_every_pass_lists():
    kube = FakeKube(ftj(status={"phase": "Running", "attempts": 1, "startTime": "2025-01-01T11:00:00Z"}))
    kube.jobs, kube.pods = [job()], [pod()]
    children = Children()
    for _ in range(2):
        kube.calls.clear()
        reconciler(kube, children).reconcile(NS, "mrpc")
        assert kube.calls[:2] == ["GET", "LIST"]



def test_the_outputs_of_the_termination_message_reach_status_with_their_digests():
    import json

    from finetune_trainer.summary import termination_message

    outputs = [{"kind": "model", "uri": "pvc://ckpt/run/model", "digest": "sha256:" + "1" * 64},
               {"kind": "oci", "uri": "oci://r.example.com/t/m:v1@sha256:" + "2" * 64, "digest": "sha256:" + "2" * 64}]
    message = termination_message({**json.loads(SUMMARY), "outputs": outputs})
    kube = FakeKube(ftj(status={"phase": "Running", "attempts": 1, "startTime": "2025-01-01T11:00:00Z"}))
    kube.jobs, kube.pods = [job(complete=True, rv=200)], [pod(phase="Succeeded", state=terminated(0, message), rv=199)]
    reconciler(kube, synced(*kube.jobs, *kube.pods)).reconcile(NS, "mrpc")
    assert kube.ftjs["mrpc"]["status"]["outputs"] == outputs
def test_kueues_workload_is_read_only_while_kueue_holds_a_queued_job():
    queued = ftj(status={"phase": "Pending", "attempts": 1, "startTime": "2025-01-01T11:00:00Z"})
    queued["spec"]["queueName"] = "team-a"
    kube = FakeKube(queued)
    kube.workloads = [{"metadata": {"name": "job-mrpc-a1-x", "labels": {"kueue.x-k8s.io/job-uid": "j1"}},
                       "status": {"conditions": [{"type": "QuotaReserved", "status": "False", "reason": "Pending",
                                                  "message": "insufficient unused quota for nvidia.com/gpu"}]}}]
    decision = reconciler(kube, synced(job(suspend=True, uid="j1"))).reconcile(NS, "mrpc")
    assert kube.calls[:2] == ["GET", "LIST Workloads j1"]
    assert decision.reason == "Queued" and decision.message.endswith("insufficient unused quota for nvidia.com/gpu")
    # Admitted (the Job runs), or not queued at all: nothing of Kueue's is read.
    for spec_queue, suspended in (("team-a", False), (None, True)):
        queued["spec"]["queueName"] = spec_queue
        kube = FakeKube(queued)
        reconciler(kube, synced(job(suspend=suspended, uid="j1"), pod())).reconcile(NS, "mrpc")
        assert not [c for c in kube.calls if "Workloads" in c]


def test_usage_that_only_the_clock_moved_is_written_by_polls_not_by_every_event():
    from datetime import timedelta

    kube = FakeKube(ftj(status={"phase": "Pending", "attempts": 1, "startTime": "2025-01-01T11:00:00Z"}))
    children = synced(job(rv=600), pod(rv=601))
    now = [NOW]
    r = Reconciler(kube, Settings(trainer_image="img"), Scraper(9090, 1.0, min_interval=15), children,
                   clock=lambda: now[0])
    r.reconcile(NS, "mrpc")  # Running: written, with the usage so far
    assert "PATCH" in kube.calls
    seconds = kube.ftjs["mrpc"]["status"]["usage"]["attempts"][0]["seconds"]
    kube.calls.clear()
    now[0] += timedelta(seconds=30)
    r.reconcile(NS, "mrpc")  # a watch event's pass: nothing changed but the clock
    assert kube.calls == []
    r.reconcile(NS, "mrpc", poll=True)  # a poll, but written 30 s ago: not yet
    assert kube.calls == []
    now[0] += timedelta(seconds=30)
    r.reconcile(NS, "mrpc", poll=True)  # a minute after the last write: the poll writes it
    assert kube.calls == ["PATCH"] and kube.ftjs["mrpc"]["status"]["usage"]["attempts"][0]["seconds"] == seconds + 60
