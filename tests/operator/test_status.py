"""The status a summary's ``tracking`` part leaves (status.py, summary.py): where the run is tracked, in
status.tracking, and the TrackingDegraded condition when tracking missed something, which never changes the phase."""

from __future__ import annotations

from finetune_operator.status import TRACKING_DEGRADED, status_from_summary
from finetune_operator.summary import read_summary
from test_lifecycle import RUNNING, cond, ftj, job, pod, run, summary

TRACKED = {"mlflowRunId": "5c0f1e2d3c4b", "mlflowExperimentId": "7", "tensorboard": "pvc://ckpt/run/tensorboard"}
DOWN = "MLflow at http://mlflow:5000: 12 updates not sent within 30s; last error: ConnectionError"


def finished(tracking, status=RUNNING, phase="Succeeded", code=0, attempt=1):
    return run(ftj(status=status), [job(attempt, complete=phase == "Succeeded", failed=None if code == 0 else "x")],
               [pod(attempt, phase=phase if phase != "Interrupted" else "Failed", exit_code=code,
                    message=summary(phase, exit_code=code, tracking=tracking, reason="Interrupted" if code else None))])


def test_a_tracked_run_puts_its_run_id_in_status_without_a_condition():
    _, d, status = finished(TRACKED)
    assert d.phase.value == "Succeeded"
    assert status["tracking"] == TRACKED
    assert TRACKING_DEGRADED not in {c["type"] for c in status["conditions"]}


def test_tracking_that_missed_updates_is_a_warning_condition_and_the_job_still_succeeds():
    _, d, status = finished({**TRACKED, "degraded": DOWN})
    assert d.phase.value == "Succeeded"
    degraded = cond(status, TRACKING_DEGRADED)
    assert (degraded["status"], degraded["reason"], degraded["message"]) == ("True", "TrackingServerUnavailable", DOWN)
    assert "degraded" not in status["tracking"]
    # Later passes (TTL, a spec edit) keep it; a later attempt that logged everything turns it False.
    _, _, later = run(ftj(status=status), [job(1, complete=True)], [pod(1, phase="Succeeded", exit_code=0,
                                                                        message=summary("Succeeded"))])
    assert cond(later, TRACKING_DEGRADED)["status"] == "True"
    retried = {**RUNNING, "attempts": 2, "conditions": status["conditions"]}
    _, _, recovered = finished(TRACKED, status=retried, attempt=2)
    assert cond(recovered, TRACKING_DEGRADED)["status"] == "False"
    assert cond(recovered, TRACKING_DEGRADED)["reason"] == "TrackingComplete"


def test_a_summarys_tracking_part_is_checked_like_the_rest():
    read = read_summary({"phase": "Succeeded", "tracking": {"mlflowRunId": "bad id with spaces", "degraded": DOWN}})
    assert read["tracking"] == {"degraded": DOWN}  # the run id does not fit the schema; the warning stays
    assert "tracking" not in read_summary({"phase": "Succeeded", "tracking": "nonsense"})
    assert status_from_summary(read_summary({"phase": "Succeeded", "tracking": TRACKED})).tracking.mlflow_run_id == \
        TRACKED["mlflowRunId"]
