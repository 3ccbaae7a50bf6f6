"""The FineTuneJob state machine from raw API objects to decisions (observed.py, lifecycle.py, failures.py), the
status written after them (status.py) and the Events and notices (events.py), without a cluster."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from finetune_operator.api import format_time
from finetune_operator.events import transition_event, transition_notice
from finetune_operator.lifecycle import CreateAttempt, DeleteFineTuneJob, ResumeAttempt, SuspendAttempt, decide
from finetune_operator.status import CONDITION_TYPES, next_status
from finetune_operator.observed import observe

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
T = lambda seconds: format_time(NOW + timedelta(seconds=seconds))  # noqa: E731


def ftj(status=None, generation=1, **spec_updates):
    spec = {
        "model": {"source": "hf://org/model"},
        "task": "sequence-classification",
        "dataset": {"source": "pvc://data/reviews"},
        "strategy": {"type": "partial", "layers": "last:2"},
        "output": {"location": "pvc://ckpt/run"},
        "runPolicy": {"backoffLimit": 3},
    }
    for key, value in spec_updates.items():
        if key in ("runPolicy",):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return {
        "apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": "mrpc", "namespace": "ml", "uid": "u1", "generation": generation},
        "spec": spec,
        "status": status or {},
    }


def job(n, complete=False, failed=None, suspend=False, parallelism=1, uid=None):
    conditions = []
    if complete:
        conditions.append({"type": "Complete", "status": "True"})
    if failed:
        conditions.append({"type": "Failed", "status": "True", "reason": failed, "message": f"Job {failed}"})
    return {"metadata": {"name": f"mrpc-a{n}", "uid": uid or f"job-uid-{n}",
                         "labels": {"finetune.io/job": "mrpc", "finetune.io/attempt": str(n)}},
            "spec": {"suspend": suspend, "parallelism": parallelism},
            "status": {"conditions": conditions}}


def pod(n, index=0, phase="Running", ready=True, exit_code=None, message="", reason=None, finished=0,
        conditions=(), waiting=None, pod_reason=None):
    status = {"phase": phase, "podIP": "10.0.0.5", "conditions": list(conditions)}
    if ready:
        status["conditions"].append({"type": "Ready", "status": "True"})
    if exit_code is not None:
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": {
            "exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error"),
            "message": message, "finishedAt": T(finished)}}}]
    elif waiting:
        status["containerStatuses"] = [{"name": "trainer", "state": {"waiting": waiting}}]
    if pod_reason:
        status["reason"] = pod_reason
    return {"metadata": {"name": f"mrpc-a{n}-{index}-xyz", "labels": {"finetune.io/attempt": str(n)},
                         "annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
            "status": status}


def summary(phase, reason=None, message="", field=None, exit_code=0, **extra):
    return json.dumps({"phase": phase, "reason": reason, "message": message, "field": field,
                       "exitCode": exit_code, **extra})


def workload(n, *conditions, priority=100):
    """Kueue's Workload for Job mrpc-a<n>; ``conditions`` as (type, status, reason, message)."""
    return {"metadata": {"name": f"job-mrpc-a{n}-1a2b3", "labels": {"kueue.x-k8s.io/job-uid": f"job-uid-{n}"}},
            "spec": {"priority": priority},
            "status": {"conditions": [{"type": t, "status": s, "reason": r, "message": m}
                                      for t, s, r, m in conditions]}}


NO_QUOTA = ("QuotaReserved", "False", "Pending", "couldn't assign flavors to pod set main: insufficient unused quota "
            "for nvidia.com/gpu in flavor gpu, 1 more needed")


def run(resource, jobs=(), pods=(), now=NOW, scraped=None, workloads=()):
    o = observe(resource, list(jobs), list(pods), now, scraped, list(workloads))
    d = decide(o)
    return o, d, next_status(o, d)


def cond(status, ctype):
    return next(c for c in status["conditions"] if c["type"] == ctype)


RUNNING = {"phase": "Running", "attempts": 1, "startTime": T(-100)}


# ---------------------------------------------------------------------------------------------- start

def test_new_job_creates_attempt_1():
    o, d, status = run(ftj())
    assert d.action == CreateAttempt(1, suspend=False, active_deadline_seconds=None)
    assert (d.phase.value, d.reason) == ("Pending", "AttemptCreated")
    assert status["attempts"] == 1 and status["startTime"] == T(0) and status["observedGeneration"] == 1
    assert [c["type"] for c in status["conditions"]] == list(CONDITION_TYPES)
    assert all(c["status"] == "False" for c in status["conditions"])
    assert d.message == "created attempt 1 (Job mrpc-a1)"
    assert transition_event(o, d) is None  # a routine step: no Event (events.py)
    assert transition_notice(o, d, None) == ("Normal", "AttemptCreated", d.message)  # but a new phase: a notice
    # Its Job made, no pod started or stuck yet: still AttemptCreated, so no second status write for "0/1 running".
    o2, d2, status2 = run(ftj(status), [job(1)])
    assert (d2.phase.value, d2.reason, d2.message) == ("Pending", "AttemptCreated", d.message)
    assert status2["conditions"] == status["conditions"] and transition_event(o2, d2) is None
    assert transition_notice(o2, d2, None) is None  # the same phase
    # A pod that starts: Running, still routine; one that is stuck: a Warning, and the recovery after it is told.
    o3, d3, status3 = run(ftj(status2), [job(1)], [pod(1, phase="Pending", ready=False,
                                                         waiting={"reason": "ErrImagePull", "message": "x"})])
    assert transition_event(o3, d3)[:2] == ("Warning", "ImagePullFailed")
    o4, d4, _ = run(ftj(status3), [job(1)], [pod(1)])
    assert transition_event(o4, d4)[:2] == ("Normal", "TrainerRunning")
    o5, d5, _ = run(ftj(status2), [job(1)], [pod(1)])
    assert d5.reason == "TrainerRunning" and transition_event(o5, d5) is None
    assert transition_notice(o5, d5, None)[:2] == ("Normal", "TrainerRunning")  # Running: the sinks hear of it


def test_an_attempt_the_status_does_not_record_yet_is_reported_as_its_creation_said():
    # The creating pass of a new job writes no status (reconciler.write_later); the next one says what it would have.
    created = {**job(1), "metadata": {**job(1)["metadata"], "creationTimestamp": T(-3)}}
    o, d, status = run(ftj(), [created])
    assert d.action is None and (d.phase.value, d.reason) == ("Pending", "AttemptCreated")
    assert d.message == "created attempt 1 (Job mrpc-a1)"
    assert status["attempts"] == 1 and status["startTime"] == T(-3)  # the deadline's clock starts at the Job
    assert transition_notice(o, d, None) == ("Normal", "AttemptCreated", d.message)
    # Its pod ran before that pass did: the first write is already Running.
    _, d2, _ = run(ftj(), [created], [pod(1)])
    assert (d2.phase.value, d2.reason) == ("Running", "TrainerRunning")


def test_job_created_suspended_is_suspended():
    _, d, _ = run(ftj(runPolicy={"suspend": True}))
    assert d.action == CreateAttempt(1, suspend=True)
    assert (d.phase.value, d.reason) == ("Suspended", "Suspended")


def test_queued_job_is_created_suspended_and_left_to_kueue():
    _, d, _ = run(ftj(queueName="team-a"))
    assert d.action == CreateAttempt(1, suspend=True) and "team-a" in d.message
    _, d, _ = run(ftj(RUNNING, queueName="team-a"), [job(1, suspend=True)])
    assert (d.phase.value, d.reason, d.action) == ("Pending", "Queued", None)


def test_queued_job_says_why_kueue_has_not_admitted_it():
    queued = ftj({"phase": "Pending", "attempts": 1, "startTime": T(-10)}, queueName="team-a")
    o, d, status = run(queued, [job(1, suspend=True)], workloads=[workload(1, NO_QUOTA), workload(2, NO_QUOTA)])
    assert o.current.queueing.workload == "job-mrpc-a1-1a2b3" and o.current.queueing.priority == 100
    assert (d.phase.value, d.reason, d.action) == ("Pending", "Queued", None)
    assert d.message == ("attempt 1 waits in Kueue LocalQueue team-a (Workload job-mrpc-a1-1a2b3): couldn't assign "
                         "flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor gpu, 1 more "
                         "needed")
    assert cond(status, "Queued")["status"] == "True" and cond(status, "Ready")["reason"] == "Queued"
    # Before Kueue made a Workload, and a Workload of another Job (another uid), say only that it waits.
    for workloads in ([], [workload(1, NO_QUOTA) | {"metadata": {"name": "other", "labels": {}}}]):
        _, d, _ = run(queued, [job(1, suspend=True)], workloads=workloads)
        assert d.reason == "Queued" and "no Workload for Job mrpc-a1 yet" in d.message


def test_job_preempted_by_kueue_shows_it_and_waits_to_resume_from_its_checkpoint():
    evicted = ("Evicted", "True", "Preempted", "Preempted to accommodate a workload (UID: u2, JobUID: j2) due to "
               "prioritization in the ClusterQueue")
    o, d, status = run(ftj(RUNNING, queueName="team-a"), [job(1, suspend=True)],
                       workloads=[workload(1, evicted, ("Admitted", "False", "NoReservation", "The workload has no "
                                                        "reservation"), NO_QUOTA)])
    assert (d.phase.value, d.reason, d.action) == ("Pending", "Preempted", None)
    assert d.message.startswith("Kueue stopped attempt 1 (Preempted: Preempted to accommodate a workload (UID: u2")
    assert "it resumes from the last checkpoint when Kueue LocalQueue team-a admits it again" in d.message
    assert "insufficient unused quota" in d.message
    assert cond(status, "Queued")["status"] == "True" and cond(status, "Running")["status"] == "False"
    assert transition_event(o, d)[:2] == ("Normal", "Preempted")
    # Kueue evicts before it releases the quota: the Workload is still admitted while the Job stops.
    stopping = workload(1, evicted, ("QuotaReserved", "True", "QuotaReserved", ""), ("Admitted", "True", "", ""))
    _, d, _ = run(ftj(RUNNING, queueName="team-a"), [job(1, suspend=True)], workloads=[stopping])
    assert d.reason == "Preempted"
    # Another eviction (e.g. the ClusterQueue was stopped) is Evicted.
    stopped = ("Evicted", "True", "ClusterQueueStopped", "The ClusterQueue is stopped")
    _, d, _ = run(ftj(RUNNING, queueName="team-a"), [job(1, suspend=True)], workloads=[workload(1, stopped)])
    assert d.reason == "Evicted"
    # Admitted again: Kueue resets Evicted and unsuspends the Job, which runs.
    admitted = workload(1, ("Evicted", "False", "QuotaReserved", ""), ("QuotaReserved", "True", "QuotaReserved", ""),
                        ("Admitted", "True", "", ""))
    _, d, status = run(ftj(RUNNING, queueName="team-a"), [job(1, suspend=True)], workloads=[admitted])
    assert (d.phase.value, d.reason) == ("Pending", "WaitingForPods") and "Kueue admitted attempt 1" in d.message
    assert cond(status, "Queued")["status"] == "False"
    _, d, status = run(ftj(RUNNING, queueName="team-a"), [job(1)], [pod(1)], workloads=[admitted])
    assert (d.phase.value, d.reason) == ("Running", "TrainerRunning")
    assert cond(status, "Queued")["status"] == "False"


def test_missing_job_of_a_recorded_attempt_is_recreated_not_counted_anew():
    _, d, _ = run(ftj({**RUNNING, "attempts": 2}))
    assert d.action.number == 2


def test_unparseable_spec_fails_with_the_field():
    resource = ftj()
    resource["spec"]["strategy"] = {"type": "partial"}  # layers missing: admitted by an older CRD
    _, d, status = run(resource)
    assert (d.phase.value, d.reason, d.action) == ("Failed", "InvalidSpec", None)
    assert "strategy" in d.message
    assert cond(status, "Failed")["status"] == "True"


# ---------------------------------------------------------------------------------------------- running

def test_pods_not_running_yet_say_why_with_a_reason_of_their_own():
    unschedulable = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                     "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}
    o, d, _ = run(ftj(RUNNING), [job(1)], [pod(1, phase="Pending", ready=False, conditions=[unschedulable])])
    assert (d.phase.value, d.reason) == ("Pending", "Unschedulable")
    assert "0/1" in d.message and "Insufficient nvidia.com/gpu" in d.message and "spec.resources" in d.message
    assert transition_event(o, d)[:2] == ("Warning", "Unschedulable")
    for reason in ("ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull"):
        _, d, _ = run(ftj(RUNNING), [job(1)], [pod(1, phase="Pending", ready=False,
                                                  waiting={"reason": reason, "message": "no such image"})])
        assert d.reason == "ImagePullFailed" and f"{reason}: no such image" in d.message and "spec.image" in d.message
    missing = {"reason": "CreateContainerConfigError", "message": 'secret "hf-token" not found'}
    _, d, _ = run(ftj(RUNNING), [job(1)], [pod(1, phase="Pending", ready=False, waiting=missing)])
    assert d.reason == "ContainerCannotStart" and 'secret "hf-token" not found' in d.message
    _, d, _ = run(ftj(RUNNING), [job(1)], [pod(1, phase="Pending", ready=False,
                                              waiting={"reason": "ContainerCreating"})])
    assert (d.reason, d.message) == ("WaitingForPods", "attempt 1: 0/1 trainer pods running")


def test_running_gang_with_progress_from_the_trainer():
    scraped = {"progress": {"step": 50, "totalSteps": 200, "percent": 25.0, "etaSeconds": 300},
               "metrics": {"trainLoss": 0.7}}
    resource = ftj({**RUNNING, "metrics": {"evalLoss": 0.9}})
    pods = [pod(1, index=0), pod(1, index=1)]
    o, d, status = run(resource, [job(1, parallelism=2)], pods, scraped=scraped)
    assert (d.phase.value, d.reason) == ("Running", "TrainerRunning")
    assert "2/2" in d.message
    assert status["progress"] == {**scraped["progress"], "lastStepTime": "2025-01-01T12:00:00Z"}  # first seen now
    assert status["metrics"] == {"evalLoss": 0.9, "trainLoss": 0.7}
    assert cond(status, "Running")["status"] == "True"
    _, d, _ = run(resource, [job(1, parallelism=2)], pods[:1])
    assert (d.phase.value, d.reason) == ("Pending", "WaitingForPods")


def test_condition_transition_time_moves_only_when_the_status_flips():
    _, _, first = run(ftj(RUNNING), [job(1)], [pod(1)])
    later = NOW + timedelta(minutes=5)
    _, _, second = run(ftj(first), [job(1)], [pod(1)], now=later)
    assert cond(second, "Running")["lastTransitionTime"] == cond(first, "Running")["lastTransitionTime"]
    _, _, third = run(ftj(second), [job(1, complete=True)], [pod(1, phase="Succeeded", ready=False, exit_code=0)],
                      now=later)
    assert cond(third, "Running")["status"] == "False"
    assert cond(third, "Running")["lastTransitionTime"] == format_time(later)
    assert cond(third, "Failed")["lastTransitionTime"] == cond(first, "Failed")["lastTransitionTime"]


# ---------------------------------------------------------------------------------------------- success

def test_success_takes_metrics_and_locations_from_the_summary():
    message = summary("Succeeded", progress={"step": 200, "totalSteps": 200, "epoch": 3.0},
                      metrics={"trainLoss": 0.2, "evalAccuracy": 0.86},
                      parameters={"trainable": 10, "total": 100},
                      checkpoint={"location": "pvc://ckpt/run/checkpoint-200", "step": 200},
                      output={"location": "pvc://ckpt/run/final"})
    o, d, status = run(ftj(RUNNING), [job(1, complete=True)],
                       [pod(1, phase="Succeeded", ready=False, exit_code=0, message=message)])
    assert (d.phase.value, d.reason, d.action) == ("Succeeded", "TrainingSucceeded", None)
    assert "pvc://ckpt/run/final" in d.message
    assert status["metrics"] == {"trainLoss": 0.2, "evalAccuracy": 0.86}
    assert status["progress"] == {"step": 200, "totalSteps": 200, "epoch": 3.0, "percent": 100.0, "etaSeconds": 0}
    assert status["output"] == {"location": "pvc://ckpt/run/final"}
    assert status["parameters"] == {"trainable": 10, "total": 100}
    assert status["completionTime"] == T(0)
    assert cond(status, "Ready")["status"] == cond(status, "Succeeded")["status"] == "True"
    assert transition_event(o, d)[0:2] == ("Normal", "TrainingSucceeded")


def test_finished_job_stays_finished_and_is_deleted_after_its_ttl():
    done = {**RUNNING, "phase": "Succeeded", "completionTime": T(-60),
            "conditions": [{"type": "Ready", "status": "True", "reason": "TrainingSucceeded", "message": "done"}]}
    o, d, _ = run(ftj(done), [], [])  # its Jobs were deleted: still Succeeded, no new attempt
    assert (d.phase.value, d.reason, d.action) == ("Succeeded", "TrainingSucceeded", None)
    assert transition_event(o, d) is None
    _, d, _ = run(ftj(done, runPolicy={"ttlSecondsAfterFinished": 120}))
    assert d.action is None
    _, d, _ = run(ftj(done, runPolicy={"ttlSecondsAfterFinished": 60}))
    assert d.action == DeleteFineTuneJob()


# ---------------------------------------------------------------------------------------------- failures

def test_retryable_exit_creates_the_next_attempt():
    message = summary("Interrupted", "Interrupted", "SIGTERM; checkpoint saved", exit_code=75,
                      checkpoint={"location": "pvc://ckpt/run/checkpoint-40", "step": 40})
    o, d, status = run(ftj(RUNNING), [job(1, failed="PodFailurePolicy")],
                       [pod(1, phase="Failed", ready=False, exit_code=75, message=message)])
    assert d.action == CreateAttempt(2)
    assert (d.phase.value, d.reason) == ("Pending", "Retrying")
    assert "attempt 1 failed (Interrupted: SIGTERM; checkpoint saved)" in d.message and "2 of 4" in d.message
    assert status["attempts"] == 2
    assert status["checkpoint"] == {"location": "pvc://ckpt/run/checkpoint-40", "step": 40}
    assert transition_event(o, d)[0] == "Warning"


def test_backoff_limit_is_honoured():
    failed_pod = pod(4, phase="Failed", ready=False, exit_code=75)
    jobs = [job(n, failed="BackoffLimitExceeded") for n in (1, 2, 3, 4)]
    _, d, status = run(ftj({**RUNNING, "attempts": 4}), jobs, [failed_pod])
    assert (d.phase.value, d.reason, d.action) == ("Failed", "BackoffLimitExceeded", None)
    assert "backoffLimit: 3" in d.message
    assert status["completionTime"] == T(0)
    _, d, _ = run(ftj(RUNNING, runPolicy={"backoffLimit": 0}), [job(1, failed="BackoffLimitExceeded")],
                  [pod(1, phase="Failed", ready=False, exit_code=75)])
    assert d.reason == "BackoffLimitExceeded"


def test_permanent_failure_stops_at_once_with_the_trainers_reason():
    message = summary("Failed", "InvalidLayerSelection", "last:30 selects more blocks than the model's 12",
                      field="strategy.layers", exit_code=2)
    o, d, status = run(ftj(RUNNING), [job(1, failed="PodFailurePolicy")],
                       [pod(1, phase="Failed", ready=False, exit_code=2, message=message)])
    assert (d.phase.value, d.reason, d.action) == ("Failed", "InvalidLayerSelection", None)
    assert d.message == "spec.strategy.layers: last:30 selects more blocks than the model's 12"
    failed = cond(status, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "InvalidLayerSelection")
    assert transition_event(o, d) == ("Warning", "InvalidLayerSelection", d.message)


@pytest.mark.parametrize("pod_kw, reason, retryable", [
    ({"exit_code": 137, "reason": "OOMKilled"}, "OutOfMemory", False),
    ({"exit_code": 2, "message": "Traceback ...\nValueError: bad"}, "TrainerFailed", False),
    ({"exit_code": 1, "message": "CUDA error: an illegal memory access"}, "TrainerExited", True),
    ({"exit_code": 143, "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                                        "message": "preempted"}]}, "PodDisrupted", True),
    ({"pod_reason": "Evicted"}, "PodDisrupted", True),
])
def test_failure_classification(pod_kw, reason, retryable):
    _, d, _ = run(ftj(RUNNING), [job(1, failed="BackoffLimitExceeded")],
                  [pod(1, phase="Failed", ready=False, **pod_kw)])
    if retryable:
        assert d.reason == "Retrying" and f"({reason}:" in d.message and d.action == CreateAttempt(2)
    else:
        assert d.reason == reason and d.action is None


def test_in_a_gang_the_first_failure_is_the_cause_and_a_permanent_one_wins():
    crash = pod(1, index=1, phase="Failed", ready=False, exit_code=1, finished=10)
    collateral = pod(1, index=0, phase="Failed", ready=False, exit_code=75, finished=20)
    _, d, _ = run(ftj(RUNNING), [job(1, failed="BackoffLimitExceeded", parallelism=2)], [collateral, crash])
    assert "(TrainerExited: pod mrpc-a1-1-xyz exited with code 1)" in d.message
    permanent = pod(1, index=1, phase="Failed", ready=False, exit_code=2, finished=30)
    _, d, _ = run(ftj(RUNNING), [job(1, failed="PodFailurePolicy", parallelism=2)], [collateral, permanent])
    assert (d.phase.value, d.reason) == ("Failed", "TrainerFailed")


def test_pods_gone_the_jobs_condition_decides():
    _, d, _ = run(ftj(RUNNING), [job(1, failed="PodFailurePolicy")], [])
    assert (d.phase.value, d.reason) == ("Failed", "TrainerFailed")
    _, d, _ = run(ftj(RUNNING), [job(1, failed="BackoffLimitExceeded")], [])
    assert d.reason == "Retrying"


# ---------------------------------------------------------------------------------------------- deadline

def test_job_deadline_is_permanent():
    _, d, _ = run(ftj(RUNNING), [job(1, failed="DeadlineExceeded")], [])
    assert (d.phase.value, d.reason) == ("Failed", "DeadlineExceeded")


def test_deadline_of_the_whole_job_stops_it_and_retries_get_what_is_left():
    resource = ftj(RUNNING, runPolicy={"activeDeadlineSeconds": 50})
    _, d, _ = run(resource, [job(1)], [pod(1)])
    assert (d.phase.value, d.reason, d.action) == ("Failed", "DeadlineExceeded", SuspendAttempt(1))
    resource = ftj(RUNNING, runPolicy={"activeDeadlineSeconds": 1000})
    _, d, _ = run(resource, [job(1, failed="BackoffLimitExceeded")], [pod(1, phase="Failed", exit_code=75)])
    assert d.action == CreateAttempt(2, active_deadline_seconds=900)
    _, d, _ = run(ftj(runPolicy={"activeDeadlineSeconds": 1000}))
    assert d.action.active_deadline_seconds == 1000


# ---------------------------------------------------------------------------------------------- suspend

def test_suspend_and_resume():
    _, d, status = run(ftj(RUNNING, runPolicy={"suspend": True}), [job(1)], [pod(1)])
    assert (d.phase.value, d.action) == ("Suspended", SuspendAttempt(1))
    assert cond(status, "Suspended")["status"] == "True"
    _, d, _ = run(ftj(status, runPolicy={"suspend": True}), [job(1, suspend=True)], [])
    assert (d.phase.value, d.reason, d.action) == ("Suspended", "Suspended", None)
    later = NOW + timedelta(hours=1)
    _, d, resumed = run(ftj(status, runPolicy={"activeDeadlineSeconds": 60}), [job(1, suspend=True)], [],
                        now=later)
    assert (d.phase.value, d.reason, d.action) == ("Pending", "Resumed", ResumeAttempt(1))
    assert resumed["startTime"] == format_time(later)  # the deadline's clock starts again, as on a Job


def test_no_event_without_a_transition():
    o, d, status = run(ftj(RUNNING), [job(1)], [pod(1)])
    assert transition_event(o, d) is not None
    o, d, _ = run(ftj(status), [job(1)], [pod(1)])
    assert transition_event(o, d) is None


def test_object_storage_failures_as_the_trainer_reports_them():
    """The trainer's own summaries (objectstore.py errors): an unreachable endpoint is retried until backoffLimit
    and the end names it; a missing bucket or refused credentials stop at once naming the bucket or the key."""
    import json

    from finetune_trainer.objectstore import BucketNotFound, StorageAccessDenied, StorageUnavailable
    from finetune_trainer.summary import Report

    def message(error) -> str:
        return json.dumps(Report(output_location="s3://ckpt/run").as_dict(error))

    down = StorageUnavailable("model.source s3://models/bert: cannot reach the S3 endpoint http://s3:8333 "
                              "(EndpointConnectionError)", field="model.source")
    _, d, _ = run(ftj(RUNNING), [job(1, failed="PodFailurePolicy")],
                  [pod(1, phase="Failed", ready=False, exit_code=75, message=message(down))])
    assert d.reason == "Retrying" and d.action == CreateAttempt(2) and "(StorageUnavailable: " in d.message
    jobs = [job(n, failed="BackoffLimitExceeded") for n in (1, 2, 3, 4)]
    _, d, _ = run(ftj({**RUNNING, "attempts": 4}), jobs,
                  [pod(4, phase="Failed", ready=False, exit_code=75, message=message(down))])
    assert (d.phase.value, d.action) == ("Failed", None) and "StorageUnavailable" in d.message, d.message

    for error, named in [
        (BucketNotFound('output.location s3://ckpt/run: bucket "ckpt" does not exist at http://s3:8333',
                        field="output.location"), 'bucket "ckpt"'),
        (StorageAccessDenied('model.source s3://models/bert: ... check key "access" of Secret "s3-credentials"',
                             field="storage.s3.secretRef"), 'Secret "s3-credentials"'),
    ]:
        _, d, _ = run(ftj(RUNNING), [job(1, failed="PodFailurePolicy")],
                      [pod(1, phase="Failed", ready=False, exit_code=2, message=message(error))])
        assert (d.phase.value, d.reason, d.action) == ("Failed", error.reason, None) and named in d.message
