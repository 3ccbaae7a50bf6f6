"""``python -m finetune_trainer``: exit codes by failure class, and a summary that names the field, always."""

from __future__ import annotations

import json

import pytest
from finetune_trainer.__main__ import main
from finetune_trainer.config import EXIT_PERMANENT
from finetune_trainer.errors import NonFiniteLoss
from finetune_trainer.train import run


def write_config(path, config) -> str:
    path.write_text(json.dumps(config.wire()))
    return str(path)


def test_success_exits_zero(tmp_path, tiny_model_dir, job):
    assert main(["--config", write_config(tmp_path / "c.json", job(tiny_model_dir("bert"), maxSteps=1))]) == 0


@pytest.mark.parametrize(("change", "field", "reason"), [
    ({"dataset": {"columns": {"label": "stars"}}}, "dataset.columns.label", "InvalidData"),
    ({"strategy": {"type": "partial", "layers": "last:9"}}, "strategy.layers", "InvalidLayerSelection"),
    ({"model": {"source": "/no/such/model"}}, "model.source", "ModelNotFound"),
])
def test_permanent_failures_exit_2_with_a_summary(tmp_path, tiny_model_dir, job, change, field, reason):
    config = job(tiny_model_dir("bert")).wire()
    for key, value in change.items():
        config[key] = {**config[key], **value}
    (tmp_path / "c.json").write_text(json.dumps(config))

    assert main(["--config", str(tmp_path / "c.json")]) == EXIT_PERMANENT
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["phase"] == "Failed" and summary["reason"] == reason and summary["field"] == field
    assert summary["exitCode"] == EXIT_PERMANENT and field in summary["message"]


def test_unreadable_or_invalid_config_exits_2(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    assert main(["--config", str(tmp_path / "bad.yaml")]) == EXIT_PERMANENT
    (tmp_path / "wrong.yaml").write_text("name: x\nmodel: {source: /m}\ntask: translation\n")
    assert main(["--config", str(tmp_path / "wrong.yaml")]) == EXIT_PERMANENT
    assert main(["--config", str(tmp_path / "absent.yaml")]) == EXIT_PERMANENT


def test_non_finite_loss_stops_with_a_clear_reason(tiny_model_dir, job, tmp_path):
    import shutil

    import torch
    from transformers import AutoModelForSequenceClassification

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir("bert"), broken)
    model = AutoModelForSequenceClassification.from_pretrained(broken)
    with torch.no_grad():
        model.classifier.bias.fill_(float("inf"))  # every logit inf: the loss is NaN from the first step
    model.save_pretrained(broken)

    with pytest.raises(NonFiniteLoss) as info:
        run(job(broken))
    assert info.value.field == "training.learningRate" and "became nan at step 1" in str(info.value)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["reason"] == "NonFiniteLoss" and summary["exitCode"] == EXIT_PERMANENT


def test_early_stopping_ends_the_run_before_its_last_step(tiny_model_dir, job):
    config = job(tiny_model_dir("bert"), epochs=30, evalEvery=1, learningRate=1e-6,
                 earlyStopping={"metric": "eval_accuracy", "patience": 2, "minDelta": 0.5})
    summary = run(config)
    assert summary["phase"] == "Succeeded"
    assert summary["progress"]["step"] == 3 < summary["progress"]["totalSteps"]
