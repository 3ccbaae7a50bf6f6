"""spec.evaluation in the trainer: the final model evaluated on a held-out split, the best checkpoint as the final
model, gates that pass and fail (GateFailed, permanent, the model saved), and the summary block the operator reads."""

from __future__ import annotations

import json
import shutil

import pytest

from finetune_trainer import gates, train
from finetune_trainer.config import EXIT_PERMANENT, TrainerConfig
from finetune_trainer.errors import ConfigError, DataError, GateFailed
from finetune_trainer.output_spec import EvaluationSpec, Gate
from tiny_models import sentiment_rows, write_rows


@pytest.fixture
def with_test_split(sentiment_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(sentiment_dir, data)
    write_rows(sentiment_rows(24, seed=7), data / "test.csv")
    return data


def _evaluated(job, model, data, evaluation: dict, **training) -> TrainerConfig:
    config = job(model, data=data, dataset={"eval": "dev"}, **training)
    return config.model_copy(update={"evaluation": EvaluationSpec.model_validate(evaluation)})


def test_gate_bounds_read_as_written_and_one_bound_is_required():
    assert Gate(metric="eval_f1", min=0.85).describe() == ">= 0.85"
    assert Gate(metric="eval_loss", min=0.1, max=2).describe() == ">= 0.1, <= 2"
    with pytest.raises(ValueError, match="needs min or max"):
        Gate(metric="eval_f1")
    with pytest.raises(ValueError, match="evaluation.metric is required when evaluation.finalModel is best"):
        EvaluationSpec(finalModel="best")
    with pytest.raises(ValueError, match="eval_"):
        Gate(metric="f1", min=0.5)


def test_metric_names_are_checked_against_the_task_before_training():
    spec = EvaluationSpec.model_validate({"gates": [{"metric": "eval_accuracy", "min": 0.5},
                                                    {"metric": "eval_bleu", "min": 10}]})
    with pytest.raises(ConfigError) as error:
        gates.check_metric_names(spec, {"eval_loss": False, "eval_accuracy": True}, "sequence-classification")
    assert error.value.field == "evaluation.gates[1].metric"
    assert "it reports ['eval_accuracy', 'eval_loss']" in str(error.value)


def test_verdicts_and_enforce_name_the_missed_gate():
    spec = EvaluationSpec.model_validate({"gates": [{"metric": "eval_accuracy", "min": 0.5},
                                                    {"metric": "eval_loss", "max": 0.3}]})
    block = gates.verdicts(spec, {"eval_accuracy": 0.75, "eval_loss": 0.4}, "test", 12)
    assert block == {"split": "test", "finalModel": "last", "step": 12,
                     "metrics": {"evalAccuracy": 0.75, "evalLoss": 0.4},
                     "gates": [{"metric": "eval_accuracy", "value": 0.75, "gate": ">= 0.5", "passed": True, "min": 0.5},
                               {"metric": "eval_loss", "value": 0.4, "gate": "<= 0.3", "passed": False, "max": 0.3}],
                     "passed": False}
    with pytest.raises(GateFailed, match=r"eval_loss is 0.4 on the test split, which misses its gate \(<= 0.3\)"):
        gates.enforce(block)


def test_a_passing_gate_on_the_test_split_is_in_the_summary(tiny_model_dir, job, with_test_split, tmp_path):
    config = _evaluated(job, tiny_model_dir("bert"), with_test_split,
                        {"split": "test", "gates": [{"metric": "eval_accuracy", "min": 0.0}]}, epochs=2)
    result = train.run(config)
    evaluation = result["evaluation"]
    assert evaluation["split"] == "test" and evaluation["passed"] is True
    assert set(evaluation["metrics"]) == {"evalLoss", "evalAccuracy", "evalF1"}
    assert evaluation["gates"][0]["value"] == evaluation["metrics"]["evalAccuracy"]
    assert evaluation["step"] == result["progress"]["step"]
    assert result["usage"]["samples"] == 2 * 96 and result["usage"]["tokens"] > 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["evaluation"] == evaluation


def test_a_failing_gate_fails_permanently_after_saving_the_model(tiny_model_dir, job, with_test_split, tmp_path):
    config = _evaluated(job, tiny_model_dir("bert"), with_test_split,
                        {"split": "test", "gates": [{"metric": "eval_loss", "max": 0.0}]})
    with pytest.raises(GateFailed) as error:
        train.run(config)
    assert error.value.exit_code == EXIT_PERMANENT
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["phase"], summary["reason"], summary["field"]) == ("Failed", "GateFailed", "evaluation.gates")
    assert summary["evaluation"]["passed"] is False
    assert (tmp_path / "out" / "model").is_dir()  # kept for inspection, published nowhere


def test_best_checkpoint_becomes_the_final_model_and_survives_pruning(tiny_model_dir, job, with_test_split,
                                                                      tmp_path):
    # The dev split's labels contradict the training rule, and the model (one that learns this task: see
    # test_full_fine_tuning_learns_the_tiny_sentiment_task) gets worse on it as it learns: an early evaluation is
    # the best by construction, not by the luck of a seed.
    write_rows([{**row, "label": 1 - row["label"]} for row in sentiment_rows(32, seed=1)], with_test_split / "dev.csv")
    config = _evaluated(job, tiny_model_dir("llama"), with_test_split,
                        {"finalModel": "best", "metric": "eval_loss"}, epochs=3, evalEvery=2, learningRate=3e-3)
    config = config.model_copy(update={"output": config.output.model_copy(update={"keep_checkpoints": 1})})
    result = train.run(config)
    state = json.loads(sorted((tmp_path / "out" / "checkpoints").glob("step-*/trainer_state.json"))[-1].read_text())
    best_step = state["train"]["best_model_step"]
    assert result["evaluation"]["step"] == best_step and result["evaluation"]["finalModel"] == "best"
    assert best_step < result["progress"]["step"]  # an earlier checkpoint, whose weights came back
    # The final model's eval loss is the best one seen, measured again on the restored weights.
    assert result["evaluation"]["metrics"]["evalLoss"] == pytest.approx(state["train"]["best_model_metric"], abs=1e-4)
    kept = {p.name for p in (tmp_path / "out" / "checkpoints").glob("step-*")}
    assert f"step-{best_step}" in kept and f"step-{result['progress']['step']}" in kept


def test_a_missing_test_split_fails_before_training(tiny_model_dir, job, sentiment_dir):
    config = _evaluated(job, tiny_model_dir("bert"), sentiment_dir, {"split": "test"})
    with pytest.raises(DataError, match='evaluation.split "test" is not in') as error:
        train.run(config)
    assert error.value.field == "evaluation.split"
