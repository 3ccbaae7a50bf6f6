"""spec.evaluation, status.usage and the Stalled condition against the real control plane (KWOK pods, the operator
as a process with the chart's RBAC): a gate that passes and one that fails (status, conditions, `kubectl get ftj`
columns, Events), usage over two attempts equal to their pods' lifetimes x requests, and a trainer whose step stops
moving. The trainer's side is what it would leave: its exit summary as the termination message, and its real
Telemetry endpoint served on this machine at the pod's IP."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Iterator

import pytest

from conftest import ControlPlane
from operator_process import (FAKE_EXIT, FAKE_FAIL, FAKE_MESSAGE, RUN_FOREVER, Env, install_crd, operator_env,
                              summary_json)
from ports import free_port

pytestmark = pytest.mark.cluster

METRICS_PORT = free_port()  # where this module's "trainers" serve /metrics (the operator's trainer metrics port)
STALLED_AFTER = 4
PRICES = {"currency": "EUR", "default": {"gpuHour": 3600.0, "cpuCoreHour": 0.0, "memoryGibHour": 0.0}}
EVALUATION = {"split": "test", "gates": [{"metric": "eval_f1", "min": 0.85}]}


def _block(f1: float) -> dict:
    passed = f1 >= 0.85
    return {"split": "test", "finalModel": "last", "step": 40, "metrics": {"evalF1": f1, "evalLoss": 0.4},
            "gates": [{"metric": "eval_f1", "value": f1, "gate": ">= 0.85", "passed": passed, "min": 0.85}],
            "passed": passed}


@pytest.fixture(scope="module")
def env(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    settings = {"FINETUNE_TRAINER_METRICS_PORT": str(METRICS_PORT),
                "FINETUNE_STALLED_AFTER_SECONDS": str(STALLED_AFTER), "FINETUNE_PRICES": json.dumps(PRICES)}
    with operator_env(control_plane, tmp_path_factory.mktemp("operator"), prefix="fto-eval",
                      settings=settings) as environment:
        yield environment


@pytest.fixture(autouse=True)
def this_crd(env: Env) -> None:
    """The CRD of this checkout before each test: the plane is shared, and a session on another branch may have
    applied its own (without spec.evaluation, status.usage) since the module started."""
    install_crd(env.cp)


def _columns(env: Env, name: str) -> dict[str, str]:
    header, row = env.cp.kubectl("get", "ftj", name, "-n", env.ns).stdout.splitlines()
    starts = [header.index(h) for h in header.split()]
    cut = lambda line: [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None])]  # noqa: E731
    return dict(zip(header.split(), cut(row)))


def test_a_passed_gate_succeeds_with_the_verdict_in_status_columns_and_events(env: Env) -> None:
    env.apply_job("gate-pass", pod_metadata=RUN_FOREVER, evaluation=EVALUATION)
    [pod] = env.wait_running_pods("gate-pass", 1)
    env.finish_pod(pod, summary_json("Succeeded", None, None, 0, evaluation=_block(0.91),
                                     output={"location": "pvc://ckpt/gate-pass/model"}))
    status = env.wait_phase("gate-pass", "Succeeded")["status"]
    assert status["evaluation"]["passed"] is True and status["evaluation"]["headline"] == "eval_f1=0.91"
    assert status["evaluation"]["gates"][0] == {"metric": "eval_f1", "value": 0.91, "gate": ">= 0.85",
                                                "passed": True, "min": 0.85}
    passed = env.condition("gate-pass", "EvaluationPassed")
    assert (passed["status"], passed["reason"]) == ("True", "GatesPassed")
    assert passed["message"] == "the final model on the test split: eval_f1 0.91 meets >= 0.85"
    columns = _columns(env, "gate-pass")
    assert (columns["PHASE"], columns["EVAL"], columns["GATES"]) == ("Succeeded", "eval_f1=0.91", "GatesPassed")
    assert "TrainingSucceeded" in {e["reason"] for e in env.events("gate-pass")}


def test_a_missed_gate_fails_with_gate_failed_and_is_not_retried(env: Env) -> None:
    message = summary_json("Failed", "GateFailed", "the final model's eval_f1 is 0.71 on the test split, which "
                           "misses its gate (>= 0.85); the model is kept at the output location and not published",
                           2, field="evaluation.gates", evaluation=_block(0.71))
    env.apply_job("gate-fail", evaluation=EVALUATION, pod_metadata={
        "labels": {FAKE_FAIL: "true"}, "annotations": {FAKE_EXIT: "2", FAKE_MESSAGE: message}})
    status = env.wait_phase("gate-fail", "Failed")["status"]
    failed = env.condition("gate-fail", "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "GateFailed")
    assert failed["message"].startswith("spec.evaluation.gates: the final model's eval_f1 is 0.71")
    gate = env.condition("gate-fail", "EvaluationPassed")
    assert (gate["status"], gate["reason"]) == ("False", "EvalF1BelowMinimum")
    assert status["evaluation"]["passed"] is False and status["attempts"] == 1
    columns = _columns(env, "gate-fail")
    assert (columns["PHASE"], columns["EVAL"], columns["GATES"]) == ("Failed", "eval_f1=0.71", "EvalF1BelowMinimum")
    [event] = [e for e in env.events("gate-fail") if e["reason"] == "GateFailed"]
    assert event["type"] == "Warning" and "misses its gate (>= 0.85)" in event["message"]
    assert [j["metadata"]["name"] for j in env.jobs("gate-fail")] == ["gate-fail-a1"]


def _lifetime(pod: dict) -> float:
    state = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    parse = lambda t: datetime.fromisoformat(t.replace("Z", "+00:00"))  # noqa: E731
    return (parse(state["finishedAt"]) - parse(state["startedAt"])).total_seconds()


def test_usage_of_two_attempts_is_their_pods_lifetimes_times_requests(env: Env) -> None:
    env.apply_job("usage", pod_metadata=RUN_FOREVER, resources={"gpus": 2, "cpu": "3", "memory": "2Gi"})
    [pod1] = env.wait_running_pods("usage", 1)
    env.fail_pod(pod1, 75, summary_json("Interrupted", "Interrupted", "SIGTERM: checkpoint saved", 75,
                                        usage={"samples": 64, "tokens": 4000}))
    [pod2] = env.wait_running_pods("usage", 2)
    env.complete_pod(pod2)
    usage = env.wait_phase("usage", "Succeeded", timeout=90)["status"]["usage"]
    lifetimes = [_lifetime(p) for p in (env.pods("usage", 1)[0], env.pods("usage", 2)[0])]
    assert all(seconds > 0 for seconds in lifetimes)
    for entry, seconds in zip(usage["attempts"], lifetimes):
        assert abs(entry["seconds"] - seconds) <= 2
        assert abs(entry["gpuHours"] * 3600 - 2 * seconds) <= 2 * 2
        assert abs(entry["cpuCoreHours"] * 3600 - 3 * seconds) <= 3 * 2
        assert abs(entry["memoryGibHours"] * 3600 - 2 * seconds) <= 2 * 2
    assert [a["attempt"] for a in usage["attempts"]] == [1, 2]
    assert abs(usage["gpuHours"] * 3600 - 2 * sum(lifetimes)) <= 2 * 2 * 2
    assert usage["samples"] == 64 and usage["tokens"] == 4000  # attempt 2 left no summary (KWOK)
    # The price table: 3600 per GPU-hour, so the cost is the GPU-seconds; the chargeback counter follows.
    assert usage["estimatedCost"] == {"amount": pytest.approx(usage["gpuHours"] * 3600, abs=0.01), "currency": "EUR"}
    gpu_seconds = [line for line in env.operator.metrics().splitlines()
                   if line.startswith(f'finetune_operator_requested_gpu_seconds_total{{namespace="{env.ns}"}}')]
    assert float(gpu_seconds[0].split()[-1]) >= usage["gpuHours"] * 3600 - 0.1
    assert _columns(env, "usage")["PHASE"] == "Succeeded"


def test_a_trainer_whose_step_stops_moving_is_stalled_until_it_steps_again(env: Env) -> None:
    from finetune_trainer.telemetry import Telemetry

    trainer = Telemetry("stall")
    trainer.start(METRICS_PORT, host="127.0.0.1")
    try:
        trainer.set(trainer.total_steps, 100)
        trainer.set(trainer.step, 7)
        env.apply_job("stall", pod_metadata=RUN_FOREVER)
        [pod] = env.wait_running_pods("stall", 1)
        env.serve_metrics_from(pod)
        env.cp.wait_for(lambda: env.ftj("stall")["status"].get("progress", {}).get("step") == 7, timeout=30,
                        what="step 7 scraped into status")
        stalled = env.cp.wait_for(lambda: _true(env, "stall", "Stalled"), timeout=STALLED_AFTER + 30,
                                  what="Stalled=True")
        assert stalled["reason"] == "NoStepProgress" and "step 7 of 100 has not moved" in stalled["message"]
        ftj = env.ftj("stall")
        assert ftj["status"]["phase"] == "Running" and env.condition("stall", "Ready")["reason"] == "Stalled"
        [event] = [e for e in env.events("stall") if e["reason"] == "Stalled"]
        assert event["type"] == "Warning"
        trainer.set(trainer.step, 8)
        env.cp.wait_for(lambda: env.condition("stall", "Stalled")["status"] == "False", timeout=30,
                        what="Stalled=False after a step")
        assert env.condition("stall", "Ready")["reason"] == "TrainerRunning"
    finally:
        trainer.stop()


def _true(env: Env, name: str, ctype: str) -> dict | None:
    conditions = env.ftj(name).get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == ctype and c["status"] == "True"), None)
