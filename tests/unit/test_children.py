"""The operator's in-memory view of its Jobs and pods (children.py, observed.trim_*), and how a pass uses it
(reconciler.py): trimmed copies decide like full ones, stale answers never win, a pass LISTs only when the view
may be behind where its decision depends on it."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from typing import Any

import pytest

from finetune_operator.children import Children, behind, sync
from finetune_operator.lifecycle import CreateAttempt
from finetune_operator.observed import observe, trim_job, trim_pod
from finetune_operator.reconciler import Reconciler
from finetune_operator.scrape import Scraper
from finetune_operator.settings import Settings

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
NS = "ml"
_rv = iter(range(100, 10**6))


def ftj(name: str = "mrpc", status: dict | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1, "resourceVersion": "1"},
        "spec": {"model": {"source": "hf://org/model"}, "task": "sequence-classification",
                 "dataset": {"source": "pvc://data/reviews"}, "strategy": {"type": "partial", "layers": "last:2"},
                 "output": {"location": "pvc://ckpt/run"}, "runPolicy": {"backoffLimit": 3}},
        "status": status or {},
    }


def _meta(name: str, owner: str, attempt: int, rv: int | None = None, uid: str | None = None, **extra) -> dict:
    """Metadata as the API server returns it, with the fields nothing reads (managedFields, owner references)."""
    return {
        "name": name, "namespace": NS, "uid": uid or f"uid-{name}", "resourceVersion": str(rv or next(_rv)),
        "creationTimestamp": "2025-01-01T11:59:00Z", "generation": 1,
        "labels": {"app.kubernetes.io/managed-by": "finetune-operator", "app.kubernetes.io/name": "finetune-trainer",
                   "finetune.io/job": owner, "finetune.io/attempt": str(attempt),
                   "batch.kubernetes.io/controller-uid": "c0ffee",
                   "batch.kubernetes.io/job-name": f"{owner}-a{attempt}"},
        "ownerReferences": [{"apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob", "name": owner,
                             "uid": f"uid-{owner}", "controller": True, "blockOwnerDeletion": True}],
        "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "fieldsType": "FieldsV1",
                           "fieldsV1": {"f:status": {"f:active": {}, "f:ready": {}}}}] * 4,
        **extra,
    }


def job(owner: str = "mrpc", attempt: int = 1, complete: bool = False, failed: str | None = None,
        suspend: bool = False, parallelism: int = 1, rv: int | None = None, uid: str | None = None,
        active: int = 1) -> dict[str, Any]:
    conditions = []
    if complete:
        conditions += [{"type": "SuccessCriteriaMet", "status": "True", "lastProbeTime": "2025-01-01T12:00:00Z"},
                       {"type": "Complete", "status": "True", "lastTransitionTime": "2025-01-01T12:00:00Z"}]
    if failed:
        conditions.append({"type": "Failed", "status": "True", "reason": failed, "message": f"Job {failed}",
                           "lastTransitionTime": "2025-01-01T12:00:00Z"})
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": _meta(f"{owner}-a{attempt}", owner, attempt, rv, uid),
        "spec": {"parallelism": parallelism, "completions": parallelism, "suspend": suspend, "backoffLimit": 0,
                 "template": {"spec": {"containers": [{"name": "trainer", "image": "img", "args": ["x"] * 20}]}}},
        "status": {"conditions": conditions, "active": active, "ready": active, "startTime": "2025-01-01T11:59:00Z",
                   "uncountedTerminatedPods": {}},
    }


def pod(owner: str = "mrpc", attempt: int = 1, index: int = 0, phase: str = "Running", ready: bool = True,
        state: dict | None = None, rv: int | None = None, uid: str | None = None, reason: str | None = None,
        scheduled: dict | None = None, heartbeat: str = "2025-01-01T12:00:00Z") -> dict[str, Any]:
    name = f"{owner}-a{attempt}-{index}-xyz"
    conditions = [{"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": heartbeat},
                  scheduled or {"type": "PodScheduled", "status": "True", "lastTransitionTime": heartbeat},
                  {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": heartbeat}]
    status = {"phase": phase, "podIP": "10.0.0.5", "hostIP": "10.1.0.1", "startTime": heartbeat,
              "qosClass": "Burstable", "conditions": conditions,
              "containerStatuses": [{"name": "trainer", "image": "img", "imageID": "sha", "ready": ready,
                                     "restartCount": 0, "started": True, "containerID": "c://1",
                                     "state": state or {"running": {"startedAt": heartbeat}}}]}
    if reason:
        status.update(reason=reason, message=f"The node was low on resource: memory. ({reason})")
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": _meta(name, owner, attempt, rv, uid, annotations={
            "batch.kubernetes.io/job-completion-index": str(index), "kubectl.kubernetes.io/default-container": "t"}),
        "spec": {"containers": [{"name": "trainer", "image": "img", "env": [{"name": "A", "value": "b"}] * 10}],
                 "nodeName": "kwok-node-0"},
        "status": status,
    }


def terminated(code: int, message: str = "", reason: str | None = None) -> dict:
    return {"terminated": {"exitCode": code, "reason": reason or ("Completed" if code == 0 else "Error"),
                           "message": message, "finishedAt": "2025-01-01T12:00:00Z",
                           "startedAt": "2025-01-01T11:59:00Z", "containerID": "c://1"}}


SUMMARY = json.dumps({"phase": "Succeeded", "exitCode": 0, "metrics": {"trainLoss": 0.3},
                      "output": {"location": "pvc://ckpt/run"}, "progress": {"step": 9, "totalSteps": 9}})
STATES = {
    "running": ([job()], [pod()]),
    "starting": ([job()], [pod(phase="Pending", ready=False, state={"waiting": {"reason": "ContainerCreating"}})]),
    "image pull": ([job()], [pod(phase="Pending", ready=False,
                                 state={"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}})]),
    "unschedulable": ([job()], [pod(phase="Pending", ready=False, scheduled={
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available"})]),
    "succeeded": ([job(complete=True)], [pod(phase="Succeeded", ready=False, state=terminated(0, SUMMARY))]),
    "oom": ([job(failed="BackoffLimitExceeded")], [pod(phase="Failed", ready=False,
                                                       state=terminated(137, reason="OOMKilled"))]),
    "evicted": ([job(failed="BackoffLimitExceeded")], [pod(phase="Failed", ready=False, reason="Evicted",
                                                           state=terminated(143))]),
    "suspended": ([job(suspend=True, active=0)], []),
    "gang": ([job(parallelism=2)], [pod(index=1), pod(index=0, ready=False, phase="Pending")]),
    "retried": ([job(failed="BackoffLimitExceeded"), job(attempt=2)],
                [pod(phase="Failed", ready=False, state=terminated(75, "interrupted")), pod(attempt=2)]),
}


# ---------------------------------------------------------------------------------------------- trimming

@pytest.mark.parametrize("case", sorted(STATES))
def test_trimmed_children_are_observed_exactly_like_full_ones(case):
    jobs, pods = STATES[case]
    status = {"phase": "Running", "attempts": 1, "startTime": "2025-01-01T11:58:00Z"}
    full = observe(ftj(status=status), jobs, pods, NOW)
    trimmed = observe(ftj(status=status), [trim_job(j) for j in jobs], [trim_pod(p) for p in pods], NOW)
    assert trimmed == full


def test_a_trimmed_pod_is_a_small_fraction_of_the_full_one():
    full = pod(state=terminated(0, SUMMARY))
    assert len(json.dumps(trim_pod(full))) < len(json.dumps(full)) / 3
    assert set(trim_pod(full)["metadata"]["labels"]) == {"finetune.io/job", "finetune.io/attempt"}


# ---------------------------------------------------------------------------------------------- the store

def synced(*objects) -> Children:
    children = Children()
    children.replace([o for o in objects if o["kind"] == "Job"], [o for o in objects if o["kind"] == "Pod"],
                     children.mark())
    return children


def test_nothing_is_known_before_the_first_full_sync():
    children = Children()
    children.apply("Job", "ADDED", job())
    assert children.get(NS, "mrpc") is None and children.wants_sync
    children.replace([job()], [], children.mark())
    assert not children.wants_sync
    assert [j["metadata"]["name"] for j in children.get(NS, "mrpc")[0]] == ["mrpc-a1"]
    assert children.get(NS, "other") == ([], [])


def test_an_event_asks_for_a_pass_only_when_something_a_pass_reads_changed():
    children = synced()
    unscheduled = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}
    assert children.apply("Pod", "ADDED", pod(ready=False, rv=8, phase="Pending", scheduled=unscheduled,
                                              state={"waiting": {"reason": "ContainerCreating"}})) == (NS, "mrpc")
    # Scheduled, then its container starts: what a pass reads changed once (the reason it waited is gone).
    assert children.apply("Pod", "MODIFIED", pod(ready=False, rv=9, phase="Pending",
                                                 state={"waiting": {"reason": "ContainerCreating"}})) == (NS, "mrpc")
    no_ip = pod(ready=False, rv=10, phase="Pending", state={"waiting": {"reason": "ContainerCreating"}})
    del no_ip["status"]["podIP"]
    assert children.apply("Pod", "MODIFIED", no_ip) is None  # an IP while Pending is not read: no news either way
    assert children.apply("Pod", "MODIFIED", pod(ready=False, rv=10)) == (NS, "mrpc")  # Running
    # A new heartbeat and resourceVersion, the same phase and readiness: nothing to decide.
    assert children.apply("Pod", "MODIFIED", pod(ready=False, rv=11, heartbeat="2025-01-01T12:00:05Z")) is None
    assert children.apply("Pod", "MODIFIED", pod(ready=True, rv=12)) == (NS, "mrpc")
    assert children.apply("Job", "ADDED", job(active=0, rv=13)) == (NS, "mrpc")
    assert children.apply("Job", "MODIFIED", job(active=1, rv=14)) is None  # the Job's counters are not read
    criteria_met = job(rv=15)
    criteria_met["status"]["conditions"] = [{"type": "SuccessCriteriaMet", "status": "True"}]
    assert children.apply("Job", "MODIFIED", criteria_met) is None  # nor this condition: Complete follows
    assert children.apply("Job", "MODIFIED", job(complete=True, rv=16)) == (NS, "mrpc")
    assert children.apply("Pod", "DELETED", pod(rv=17)) == (NS, "mrpc")
    assert children.get(NS, "mrpc")[1] == []


def test_an_older_copy_never_replaces_a_newer_one():
    children = synced()
    children.seed([job(complete=True, rv=20)], [])  # a LIST answer, newer than the events still in flight
    assert children.apply("Job", "MODIFIED", job(rv=18)) is None
    [held] = children.get(NS, "mrpc")[0]
    assert held["status"]["conditions"][-1]["type"] == "Complete"


def test_a_late_list_answer_does_not_bring_back_a_deleted_child():
    children = synced()
    children.apply("Pod", "ADDED", pod(rv=30))
    children.apply("Pod", "DELETED", pod(rv=31))
    children.seed([], [pod(rv=29)])  # listed before the deletion, answered after it
    assert children.get(NS, "mrpc") == ([], [])


def test_the_late_deletion_of_an_earlier_child_of_the_same_name_keeps_the_new_one():
    children = synced()
    children.seed([job(uid="second", rv=50)], [])  # the recreated Job, from its create answer
    assert children.apply("Job", "DELETED", job(uid="first", rv=45)) is None
    assert children.get(NS, "mrpc")[0][0]["metadata"]["name"] == "mrpc-a1"


def test_a_child_whose_label_was_removed_leaves():
    children = synced(pod(rv=60))
    unlabelled = pod(rv=61)
    del unlabelled["metadata"]["labels"]["finetune.io/job"]
    # The API server sends DELETED when an object stops matching a watch's selector; a MODIFIED works as well.
    assert children.apply("Pod", "MODIFIED", unlabelled) == (NS, "mrpc")
    assert children.get(NS, "mrpc") == ([], [])


def test_a_relist_asks_for_a_full_sync_that_drops_what_the_api_no_longer_has():
    children = synced(job(rv=70), pod(rv=71), job("gone", rv=72))
    assert not children.wants_sync
    children.apply("Job", None, job(rv=70))  # Kopf restarted its watch and lists again
    assert children.wants_sync
    since = children.mark()
    children.apply("Job", "ADDED", job("fresh", rv=90))  # arrives while the full LIST is in flight
    children.replace([job(rv=70)], [pod(rv=71)], since)
    assert not children.wants_sync
    assert children.get(NS, "gone") == ([], [])
    assert children.get(NS, "fresh")[0] and children.get(NS, "mrpc")[1]
    assert len(children) == 3


def test_full_sync_through_a_listing_function():
    children = Children()
    sync(children, lambda: ([job()], [pod()]))
    assert [len(x) for x in children.get(NS, "mrpc")] == [1, 1]


# ---------------------------------------------------------------------------------------------- behind

@pytest.mark.parametrize("status, jobs, pods, is_behind", [
    ({}, [], [], False),  # a new job: nothing to be behind on
    ({"phase": "Pending", "attempts": 1}, [], [], True),  # our Job's event has not arrived
    ({"phase": "Pending", "attempts": 2}, [job()], [], True),  # attempt 2's has not
    ({"phase": "Running", "attempts": 1}, [job()], [pod()], False),
    ({"phase": "Running", "attempts": 1}, [job(complete=True)], [pod()], True),  # the pod's end has not
    ({"phase": "Running", "attempts": 1}, [job(complete=True)], [pod(phase="Succeeded")], False),
    ({"phase": "Running", "attempts": 1}, [job(failed="DeadlineExceeded")], [], True),
    ({"phase": "Succeeded", "attempts": 1}, [], [], False),  # finished: children are not read
    ({"phase": "Failed", "attempts": 0}, [], [], False),  # InvalidSpec: never had an attempt
])
def test_behind_where_the_decision_depends_on_it(status, jobs, pods, is_behind):
    trimmed = [trim_job(j) for j in jobs], [trim_pod(p) for p in pods]
    assert (behind(status, *trimmed) is not None) == is_behind


# ---------------------------------------------------------------------------------------------- a pass

class FakeKube:
    """The API as the reconciler sees it: FineTuneJobs by name, children by label, every call recorded."""

    def __init__(self, *ftjs: dict):
        self.ftjs = {f["metadata"]["name"]: f for f in ftjs}
        self.jobs: list[dict] = []
        self.pods: list[dict] = []
        self.calls: list[str] = []

    def get_finetunejob(self, namespace, name):
        self.calls.append("GET")
        return copy.deepcopy(self.ftjs.get(name))

    def list_children(self, namespace, name):
        self.calls.append("LIST")
        mine = lambda o: o["metadata"]["labels"]["finetune.io/job"] == name  # noqa: E731
        return [j for j in self.jobs if mine(j)], [p for p in self.pods if mine(p)]

    def create_if_absent(self, obj):
        self.calls.append(f"POST {obj['kind']}")
        if obj["kind"] != "Job":
            return obj
        if any(j["metadata"]["name"] == obj["metadata"]["name"] for j in self.jobs):
            return None
        created = {**obj, "metadata": {**obj["metadata"], "uid": "u", "resourceVersion": str(next(_rv))}}
        self.jobs.append(created)
        return created

    def patch_status(self, namespace, name, patch):
        self.calls.append("PATCH")
        status = self.ftjs[name]["status"]
        self.ftjs[name]["status"] = {k: v for k, v in {**status, **patch}.items() if v is not None}

    def post_event(self, ftj, type_, reason, message):
        self.calls.append(f"EVENT {reason}")


def reconciler(kube: FakeKube, children: Children) -> Reconciler:
    scraper = Scraper(9090, 1.0, min_interval=15)
    return Reconciler(kube, Settings(trainer_image="img"), scraper, children, clock=lambda: NOW)


def test_a_new_job_is_created_without_listing_and_the_next_pass_finds_its_job_in_memory():
    kube, children = FakeKube(ftj()), synced()
    decision = reconciler(kube, children).reconcile(NS, "mrpc")
    assert isinstance(decision.action, CreateAttempt)
    assert kube.calls == ["GET", "POST ConfigMap", "POST Job", "PATCH", "EVENT AttemptCreated"]
    kube.calls.clear()
    # No watch event yet for the new Job: the store has it from the create's answer.
    decision = reconciler(kube, children).reconcile(NS, "mrpc")
    assert kube.calls == ["GET", "PATCH", "EVENT WaitingForPods"] and "0/1 trainer pods" in decision.message
    assert [j["metadata"]["name"] for j in kube.jobs] == ["mrpc-a1"]


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

