"""End to end on the real node: spec.evaluation in trainer pods that really train. The trainer evaluates the final
model on a held-out split, writes the verdict into its termination message, and the in-cluster operator turns it
into status.evaluation, the EvaluationPassed condition and, for a missed gate, phase Failed with reason GateFailed,
not retried; status.usage sums the pod's real lifetime x its requests and the trainer's counts."""

from __future__ import annotations

from datetime import datetime

import pytest

from e2e.conftest import Cluster
from e2e.test_real_pods import spec

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]


def _condition(status: dict, ctype: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == ctype)


@pytest.mark.parametrize("name, gate, phase, reason", [
    ("gate-pass", {"metric": "eval_accuracy", "min": 0.0}, "Succeeded", "GatesPassed"),
    ("gate-fail", {"metric": "eval_loss", "max": 0.0}, "Failed", "EvalLossAboveMaximum"),
])
def test_the_final_models_verdict_reaches_status(cluster: Cluster, name, gate, phase, reason) -> None:
    cluster.apply_job(name, **spec(name=name, evaluation={"split": "test", "finalModel": "best",
                                                          "metric": "eval_accuracy", "gates": [gate]}))
    status = cluster.wait_phase(name, ("Succeeded", "Failed"), timeout=600)
    assert status["phase"] == phase, cluster.diagnose(name)
    evaluation = status["evaluation"]
    assert evaluation["split"] == "test" and evaluation["finalModel"] == "best"
    assert {"evalLoss", "evalAccuracy", "evalF1"} <= set(evaluation["metrics"])
    assert evaluation["headline"] == f"{gate['metric']}={evaluation['gates'][0]['value']:.4g}"
    assert _condition(status, "EvaluationPassed")["reason"] == reason
    if phase == "Failed":
        assert _condition(status, "Ready")["reason"] == "GateFailed" and status["attempts"] == 1
        assert any(e["reason"] == "GateFailed" and e["type"] == "Warning" for e in cluster.events(name))
    # Usage: the real pod's lifetime x its requests (1 CPU, 2Gi), and what the trainer processed.
    [pod] = cluster.pods(name)
    state = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    parse = lambda t: datetime.fromisoformat(t.replace("Z", "+00:00"))  # noqa: E731
    lifetime = (parse(state["finishedAt"]) - parse(state["startedAt"])).total_seconds()
    usage = status["usage"]
    assert abs(usage["cpuCoreHours"] * 3600 - lifetime) <= 2
    assert abs(usage["memoryGibHours"] * 3600 - 2 * lifetime) <= 2 * 2
    assert usage["samples"] == 64 and usage["tokens"] > 0 and usage["gpuHours"] == 0
