"""The conditions beside the phase (conditions.py) through the lifecycle's rules, the status they write and the
Events they post: a passed and a missed gate, a stalled trainer and one that steps again."""

from __future__ import annotations

from dataclasses import replace

from finetune_operator.events import transition_event
from finetune_operator.lifecycle import decide
from finetune_operator.observed import Policy, observe
from finetune_operator.status import next_status
from test_lifecycle import NOW, RUNNING, T, cond, ftj, job, pod, summary

GATED = {"split": "test", "finalModel": "best", "step": 40, "metrics": {"evalF1": 0.91, "evalLoss": 0.3},
         "passed": True, "gates": [{"metric": "eval_f1", "value": 0.91, "gate": ">= 0.85", "passed": True,
                                    "min": 0.85}]}
MISSED = {**GATED, "passed": False, "metrics": {"evalF1": 0.71, "evalLoss": 0.6},
          "gates": [{"metric": "eval_f1", "value": 0.71, "gate": ">= 0.85", "passed": False, "min": 0.85},
                    {"metric": "eval_loss", "value": 0.6, "gate": "<= 0.8", "passed": True, "max": 0.8}]}
STALL = Policy(stalled_after_seconds=600)


def decided(resource, jobs=(), pods=(), now=NOW, scraped=None, policy=Policy()):
    o = replace(observe(resource, list(jobs), list(pods), now, scraped), policy=policy)
    d = decide(o)
    return o, d, next_status(o, d)


def test_a_passed_gate_succeeds_with_evaluation_passed_and_a_headline():
    message = summary("Succeeded", evaluation=GATED, output={"location": "pvc://ckpt/run/model"})
    o, d, status = decided(ftj(RUNNING), [job(1, complete=True)], [pod(1, phase="Succeeded", exit_code=0,
                                                                      message=message)])
    assert (d.phase.value, d.reason) == ("Succeeded", "TrainingSucceeded")
    passed = cond(status, "EvaluationPassed")
    assert (passed["status"], passed["reason"]) == ("True", "GatesPassed")
    assert passed["message"] == "the final model on the test split: eval_f1 0.91 meets >= 0.85"
    assert status["evaluation"]["headline"] == "eval_f1=0.91" and status["evaluation"]["passed"] is True
    assert status["evaluation"]["step"] == 40
    assert transition_event(o, d)[:2] == ("Normal", "TrainingSucceeded")


def test_a_missed_gate_fails_with_gate_failed_and_the_gate_named_in_the_condition():
    message = summary("Failed", "GateFailed", "the final model's eval_f1 is 0.71 on the test split, which misses "
                      "its gate (>= 0.85)", field="evaluation.gates", exit_code=2, evaluation=MISSED)
    o, d, status = decided(ftj(RUNNING), [job(1, failed="PodFailurePolicy")],
                           [pod(1, phase="Failed", ready=False, exit_code=2, message=message)])
    assert (d.phase.value, d.reason) == ("Failed", "GateFailed")
    assert d.action is None  # permanent: not retried
    failed = cond(status, "Failed")
    assert failed["reason"] == "GateFailed" and "misses its gate (>= 0.85)" in failed["message"]
    gate = cond(status, "EvaluationPassed")
    assert (gate["status"], gate["reason"]) == ("False", "EvalF1BelowMinimum")
    assert gate["message"] == ("the final model on the test split: eval_f1 0.71 misses >= 0.85; "
                               "eval_loss 0.6 meets <= 0.8")
    assert status["evaluation"]["passed"] is False and status["evaluation"]["headline"] == "eval_f1=0.71"
    assert transition_event(o, d)[:2] == ("Warning", "GateFailed")
    # Finished: later passes keep the verdict.
    later, d2, status2 = decided(ftj(status), [job(1, failed="PodFailurePolicy")], [])
    assert cond(status2, "EvaluationPassed") == gate and transition_event(later, d2) is None


def test_an_evaluation_without_gates_is_evaluated_and_headlined_by_its_first_metric():
    block = {**GATED, "gates": [], "metrics": {"evalLoss": 0.3, "evalAccuracy": 0.88}}
    _, _, status = decided(ftj(RUNNING), [job(1, complete=True)],
                           [pod(1, phase="Succeeded", exit_code=0, message=summary("Succeeded", evaluation=block))])
    assert cond(status, "EvaluationPassed")["reason"] == "Evaluated"
    assert status["evaluation"]["headline"] == "evalAccuracy=0.88"


def _scraped(step, total=100):
    return {"progress": {"step": step, "totalSteps": total}, "metrics": {}}


def test_a_trainer_whose_step_does_not_move_is_stalled_then_clears_when_it_steps():
    # First read of step 10: its clock starts now.
    _, d, status = decided(ftj(RUNNING), [job(1)], [pod(1)], scraped=_scraped(10), policy=STALL)
    assert d.reason == "TrainerRunning" and status["progress"]["lastStepTime"] == T(0)
    assert cond(status, "Stalled")["status"] == "False"
    # Still step 10 after 599 s: not yet; after 600 s: Stalled, a Warning Event, the job keeps running.
    _, d, status2 = decided(ftj(status), [job(1)], [pod(1)], now=NOW.replace(minute=9, second=59),
                            scraped=_scraped(10), policy=STALL)
    assert d.reason == "TrainerRunning" and status2["progress"]["lastStepTime"] == T(0)
    o, d, stalled = decided(ftj(status2), [job(1)], [pod(1)], now=NOW.replace(minute=10),
                            scraped=_scraped(10), policy=STALL)
    assert (d.phase.value, d.reason) == ("Running", "Stalled")
    condition = cond(stalled, "Stalled")
    assert (condition["status"], condition["reason"]) == ("True", "NoStepProgress")
    assert "step 10 of 100 has not moved since 2025-01-01T12:00:00Z (600s" in condition["message"]
    assert transition_event(o, d)[:2] == ("Warning", "Stalled")
    # A pass without a scrape (a pod event) keeps it stalled: no flapping.
    _, d, kept = decided(ftj(stalled), [job(1)], [pod(1)], now=NOW.replace(minute=10, second=5), policy=STALL)
    assert d.reason == "Stalled" and cond(kept, "Stalled")["status"] == "True"
    # The step moves: cleared, an Event says it runs again.
    o, d, moving = decided(ftj(kept), [job(1)], [pod(1)], now=NOW.replace(minute=11), scraped=_scraped(11),
                           policy=STALL)
    assert d.reason == "TrainerRunning" and cond(moving, "Stalled")["status"] == "False"
    assert moving["progress"]["lastStepTime"] == "2025-01-01T12:11:00Z"
    assert transition_event(o, d)[:2] == ("Normal", "TrainerRunning")


def test_past_its_last_step_or_with_the_setting_off_a_trainer_is_not_stalled():
    status = {**RUNNING, "progress": {"step": 100, "totalSteps": 100, "lastStepTime": T(-3600)}}
    _, d, out = decided(ftj(status), [job(1)], [pod(1)], scraped=_scraped(100), policy=STALL)
    assert d.reason == "TrainerRunning" and cond(out, "Stalled")["status"] == "False"
    status = {**RUNNING, "progress": {"step": 5, "totalSteps": 100, "lastStepTime": T(-3600)}}
    _, d, out = decided(ftj(status), [job(1)], [pod(1)], scraped=_scraped(5), policy=Policy())
    assert d.reason == "TrainerRunning" and "Stalled" not in {c["type"] for c in out["conditions"]}


def test_a_stalled_job_that_ends_is_no_longer_stalled_and_a_new_attempt_restarts_the_clock():
    stalled = {**RUNNING, "progress": {"step": 10, "totalSteps": 100, "lastStepTime": T(-900)},
               "conditions": [{"type": "Stalled", "status": "True", "reason": "NoStepProgress", "message": "m",
                               "lastTransitionTime": T(-300)}]}
    interrupted = summary("Interrupted", "Interrupted", "SIGTERM", exit_code=75)
    _, d, status = decided(ftj(stalled), [job(1, failed="PodFailurePolicy")],
                           [pod(1, phase="Failed", ready=False, exit_code=75, message=interrupted)], policy=STALL)
    assert d.reason == "Retrying" and cond(status, "Stalled")["status"] == "False"
    assert "lastStepTime" not in status["progress"]
