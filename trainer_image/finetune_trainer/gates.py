"""The final model's evaluation as spec.evaluation asks for it: the metrics it names, which checkpoint is best, and
the gates' verdicts.

The recipe (train.py) evaluates the final model once after training and hands the metrics here; ``verdicts`` turns
them into the summary's ``evaluation`` block (the operator's status.evaluation), and ``enforce`` raises GateFailed
for the first gate missed. The recipe calls ``enforce`` after saving the model and before anything that publishes
it, so a model that fails a gate is kept for inspection but never pushed or exported; a publishing step can also
read ``evaluation.passed`` in the summary.
"""

from __future__ import annotations

from typing import Any

from finetune_trainer.config import EvaluationSpec, Gate
from finetune_trainer.errors import ConfigError, GateFailed
from finetune_trainer.summary import metric_key


def check_metric_names(spec: EvaluationSpec | None, higher_is_better: dict[str, bool], task: str) -> None:
    """Pre-flight: every metric the spec names is one the task reports (before the first step, not after the last)."""
    if spec is None:
        return
    named = [("evaluation.metric", spec.metric)] if spec.metric else []
    named += [(f"evaluation.gates[{i}].metric", gate.metric) for i, gate in enumerate(spec.gates or [])]
    for field, metric in named:
        if metric not in higher_is_better:
            raise ConfigError(f"{field} {metric!r} is not reported by {task}; it reports {sorted(higher_is_better)}",
                              field=field)


def improves(value: float, best: float | None, higher_is_better: bool) -> bool:
    """Whether ``value`` beats ``best`` (None: nothing yet) in the metric's direction."""
    return best is None or (value > best if higher_is_better else value < best)


def passes(gate: Gate, value: float) -> bool:
    return (gate.min is None or value >= gate.min) and (gate.max is None or value <= gate.max)


def verdicts(spec: EvaluationSpec, metrics: dict[str, float], split: str, step: int) -> dict[str, Any]:
    """The summary's evaluation block: what was evaluated, its metrics (named as in status.metrics) and each gate's
    verdict; ``passed`` is True when every gate passed (or there are none)."""
    gates = [{"metric": g.metric, "value": round(metrics[g.metric], 6), "gate": g.describe(),
              "passed": passes(g, metrics[g.metric]),
              **{k: v for k, v in (("min", g.min), ("max", g.max)) if v is not None}} for g in spec.gates or []]
    return {"split": split, "finalModel": spec.final_model, "step": step,
            "metrics": {metric_key(k): round(v, 6) for k, v in metrics.items()},
            "gates": gates, "passed": all(g["passed"] for g in gates)}


def enforce(block: dict[str, Any]) -> None:
    """Raise GateFailed naming the first gate the final model missed."""
    missed = next((g for g in block["gates"] if not g["passed"]), None)
    if missed is not None:
        raise GateFailed(f"the final model's {missed['metric']} is {missed['value']:g} on the {block['split']} split, "
                         f"which misses its gate ({missed['gate']}); the model is kept at the output location and "
                         "not published", field="evaluation.gates")
