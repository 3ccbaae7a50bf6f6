"""The conditions a FineTuneJob has besides its phase's: ``Stalled`` and ``EvaluationPassed``, decided by pure
functions the lifecycle's rules call (lifecycle.active, lifecycle.decide).

``Stalled``: a Running trainer whose step, as the operator scrapes it, has not moved for the operator's
stalledAfterSeconds (``status.progress.lastStepTime`` is the clock, status.py stamps it). The chart's
FineTuneJobStalled alert reads the same threshold. ``EvaluationPassed``: spec.evaluation's verdict from the
trainer's exit summary, its reason naming the first gate missed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetune_operator.api import parse_time
from finetune_operator.observed import Observed
from finetune_trainer.summary import metric_key

STALLED = "Stalled"  # the condition's type, and the Ready reason of a stalled job (a Warning Event)
EVALUATION_PASSED = "EvaluationPassed"
STEPPING = "Stepping"
NO_STEP_PROGRESS = "NoStepProgress"
GATES_PASSED = "GatesPassed"
EVALUATED = "Evaluated"  # an evaluation without gates


@dataclass(frozen=True)
class SetCondition:
    """A condition besides the phase's (Stalled, EvaluationPassed); one a decision does not set keeps its value."""

    type: str
    status: bool
    reason: str
    message: str


def stall(o: Observed) -> SetCondition | None:
    """The Stalled condition of a Running job from the step just scraped and the time status says it last moved;
    None when this pass read no step (the condition keeps its value, so a pass without a scrape does not flap it).
    A trainer past its last step (final evaluation, export) is not stalled, as in the PrometheusRule's alert."""
    limit = o.policy.stalled_after_seconds
    progress = (o.scraped or {}).get("progress") or {}
    step, total = progress.get("step"), progress.get("totalSteps")
    if not limit or step is None:
        return None
    recorded = o.status.progress
    since = recorded.last_step_time if recorded and recorded.step == step else None
    idle = (o.now - parse_time(since)).total_seconds() if since else 0.0
    if idle < limit or (total and step >= total):
        return SetCondition(STALLED, False, STEPPING, f"step {step} of {total or '?'}")
    return SetCondition(STALLED, True, NO_STEP_PROGRESS,
                        f"step {step} of {total or '?'} has not moved since {since} ({int(idle)}s, the operator's "
                        f"stalledAfterSeconds is {int(limit)}s): a hung data loader or collective, or a far too slow "
                        "node; `kubectl logs` of rank 0 says which, and deleting the pod retries from the checkpoint")


def was_stalled(o: Observed) -> SetCondition | None:
    """The Stalled condition as status holds it, when True: what a pass without a scrape keeps."""
    cond = next((c for c in o.status.conditions or [] if c.type == STALLED), None)
    return SetCondition(STALLED, True, cond.reason, cond.message) if cond and cond.status == "True" else None


def gate_reason(gate: dict[str, Any]) -> str:
    """The EvaluationPassed reason of a missed gate, naming it: eval_f1 below its min -> EvalF1BelowMinimum."""
    name = metric_key(gate["metric"])
    below = gate.get("min") is not None and gate["value"] < gate["min"]
    return f"{name[:1].upper()}{name[1:]}{'BelowMinimum' if below else 'AboveMaximum'}"


def evaluation_condition(summary: dict[str, Any] | None) -> SetCondition | None:
    """EvaluationPassed from the trainer's evaluation block: True when every gate passed, else False with the first
    missed gate in the reason and every verdict in the message."""
    evaluation = (summary or {}).get("evaluation")
    if not evaluation:
        return None
    verdicts = [f"{g['metric']} {g['value']:g} {'meets' if g['passed'] else 'misses'} {g['gate']}"
                for g in evaluation.get("gates") or []]
    where = f"on the {evaluation.get('split')} split" if evaluation.get("split") else "after training"
    missed = next((g for g in evaluation.get("gates") or [] if not g["passed"]), None)
    if missed is not None:
        return SetCondition(EVALUATION_PASSED, False, gate_reason(missed),
                            f"the final model {where}: {'; '.join(verdicts)}")
    if verdicts:
        return SetCondition(EVALUATION_PASSED, True, GATES_PASSED, f"the final model {where}: {'; '.join(verdicts)}")
    return SetCondition(EVALUATION_PASSED, True, EVALUATED, f"the final model was evaluated {where} (no gates)")
