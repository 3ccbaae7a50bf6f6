"""Early stopping compares in the direction the task declares for the metric, and counts evaluations without
improvement in the train state (so a resumed run keeps counting)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from finetune_trainer.config import EarlyStopping
from finetune_trainer.errors import ConfigError
from finetune_trainer.stopping import early_stop
from finetune_trainer.tasks.base import get_task


@dataclass
class State:
    step: int = 0
    best_metric: float | None = None
    evals_without_improvement: int = 0


def evaluations(metric: str, values: list[float], patience: int = 2, min_delta: float = 0.0) -> list[bool]:
    rule, state = EarlyStopping(metric=metric, patience=patience, minDelta=min_delta), State()
    task = get_task("causal-lm")
    return [early_stop(rule, {metric: v}, task.higher_is_better, state, task.task) for v in values]


def test_a_loss_improves_downwards_and_the_run_stops_after_patience_evaluations_without():
    assert evaluations("eval_perplexity", [9.0, 8.0, 8.5, 7.0, 7.5, 7.2]) == [False, False, False, False, False, True]


def test_an_accuracy_improves_upwards():
    rule, state = EarlyStopping(metric="eval_accuracy", patience=1), State()
    higher = get_task("sequence-classification").higher_is_better
    assert not early_stop(rule, {"eval_accuracy": 0.5}, higher, state, "sequence-classification")
    assert not early_stop(rule, {"eval_accuracy": 0.7}, higher, state, "sequence-classification")
    assert state.best_metric == 0.7
    assert early_stop(rule, {"eval_accuracy": 0.6}, higher, state, "sequence-classification")


def test_a_gain_below_min_delta_is_no_improvement():
    assert evaluations("eval_loss", [1.0, 0.99, 0.98], patience=2, min_delta=0.05) == [False, False, True]


def test_no_rule_never_stops_and_an_unreported_metric_names_the_field():
    assert not early_stop(None, {"eval_loss": 1.0}, {"eval_loss": False}, State(), "seq2seq")
    with pytest.raises(ConfigError) as error:
        early_stop(EarlyStopping(metric="eval_bleu"), {"eval_loss": 1.0}, {"eval_loss": False}, State(),
                   "sequence-classification")
    assert error.value.field == "training.earlyStopping.metric" and "not reported" in str(error.value)


@pytest.mark.parametrize("name", ["sequence-classification", "token-classification", "question-answering",
                                  "causal-lm", "seq2seq"])
def test_every_task_declares_a_direction_for_its_loss(name):
    assert get_task(name).higher_is_better["eval_loss"] is False
