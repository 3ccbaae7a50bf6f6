"""The operator's in-memory view of its Jobs and pods (children.py, observed.trim_*): trimmed copies decide like
full ones, stale answers never win, and ``behind`` says when a pass must LIST because the view may lag where its
decision depends on it."""

from __future__ import annotations

import json

import pytest

from api_objects import NOW, NS, SUMMARY, ftj, job, pod, synced, terminated
from finetune_operator.children import Children, behind
from finetune_operator.observed import observe, trim_job, trim_pod


# ---------------------------------------------------------------------------------------------- trimming

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

def test_nothing_is_known_until_every_watch_has_listed():
    children = Children(namespaces=(NS, "other"))
    children.apply("Job", "ADDED", job())
    for scope in [("Job", NS), ("Pod", NS), ("Job", "other")]:
        children.replace(scope, [job()] if scope == ("Job", NS) else [], children.mark())
        assert children.get(NS, "mrpc") is None
    children.replace(("Pod", "other"), [], children.mark())
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


def test_a_list_drops_what_the_api_no_longer_has_of_its_own_scope_only_and_says_whose_children_changed():
    children = synced(job(rv=70), pod(rv=71), job("gone", rv=72), pod("gone", rv=73))
    since = children.mark()
    children.seed([job("fresh", rv=90)], [])  # a create's answer while the LIST is in flight
    changed = children.replace(("Job", None), [job(rv=70), job("moved", rv=80)], since)
    assert changed == {(NS, "gone"), (NS, "moved")}  # mrpc's Job is the same; fresh's is newer than the answer
    jobs, pods = children.get(NS, "gone")
    assert jobs == [] and len(pods) == 1  # the pods' watch lists its own scope
    assert children.get(NS, "fresh")[0] and children.get(NS, "mrpc")[1]


def test_a_list_of_one_namespace_leaves_the_others_alone():
    children = Children(namespaces=(NS, "other"))
    for scope in [("Job", NS), ("Pod", NS), ("Pod", "other")]:
        children.replace(scope, [], children.mark())
    elsewhere = job()
    elsewhere["metadata"]["namespace"] = "other"
    children.replace(("Job", "other"), [elsewhere], children.mark())
    children.replace(("Job", NS), [job()], children.mark())
    children.replace(("Job", NS), [], children.mark())
    assert children.get(NS, "mrpc") == ([], []) and children.get("other", "mrpc")[0]


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
