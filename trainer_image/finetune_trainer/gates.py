"""The final model's evaluation as spec.evaluation asks for it: the split it is measured on, the metrics it names,
which checkpoint is best (and bringing its weights back), and the gates' verdicts.

The recipe (train.py) evaluates the final model once after training and hands the metrics here; ``verdicts`` turns
them into the summary's ``evaluation`` block (the operator's status.evaluation), and ``enforce`` raises GateFailed
for the first gate missed. The recipe calls ``enforce`` after saving the model and before anything that publishes
it, so a model that fails a gate is kept for inspection but never pushed or exported; a publishing step can also
read ``evaluation.passed`` in the summary.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from finetune_trainer import checkpoints, data
from finetune_trainer.config import TrainerConfig
from finetune_trainer.errors import ConfigError, GateFailed
from finetune_trainer.output_spec import EvaluationSpec, Gate
from finetune_trainer.summary import metric_key
from finetune_trainer.tasks.base import PreparedData, RawSplits, TaskAdapter

log = logging.getLogger("finetune_trainer")


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


def keeps_best(spec: EvaluationSpec | None) -> bool:
    return spec is not None and spec.final_model == "best"


def prepare_split(config: TrainerConfig, task: TaskAdapter, tokenizer: Any, raw: RawSplits) -> PreparedData | None:
    """evaluation.split, tokenized as the eval split is (the task derives labels from train, so train goes along);
    a missing or malformed split fails here, before the first step. None: the eval split is evaluated again."""
    spec = config.evaluation
    if spec is None or spec.split is None:
        return None
    test = data.load_split(config.dataset, spec.split, "evaluation.split")
    return task.prepare(RawSplits(train=raw.train, eval=test), tokenizer, config.dataset)


def restore_best(output: Path, step: int, model: Any, trainable_names: list[str], config: TrainerConfig) -> None:
    """The best checkpoint's weights into ``model`` (kept by checkpoints.save's ``protect``)."""
    best = checkpoints.at_step(output, step)
    if best is None:
        raise ConfigError(f"the best checkpoint (step {step}) is gone from {config.output.location}; was it "
                          "deleted by hand?", field="evaluation.finalModel")
    best.restore_weights(model, trainable_names, config.output.location)
    log.info("final model: the best checkpoint, step %d by %s", step, config.evaluation.metric)


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
