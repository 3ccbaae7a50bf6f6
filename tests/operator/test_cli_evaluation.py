"""`finetune run` with spec.evaluation prints the evaluation block status would hold (the trainer's summary through
status_from_summary, as in a cluster), for a passed and a missed gate; `finetune plan --prices` adds the hourly cost
of the job's requests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiny_models import save_tiny_model, sentiment_rows, write_rows  # noqa: E402

from finetune_operator import cli  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-eval")
    save_tiny_model("bert", "AutoModelForSequenceClassification", root / "model", num_labels=2)
    for name, n, seed in (("train", 64, 0), ("dev", 16, 1), ("test", 16, 2)):
        write_rows(sentiment_rows(n, seed=seed), root / "data" / f"{name}.csv")
    return root


def _manifest(tiny: Path, tmp_path: Path, gate: dict, **resources) -> Path:
    spec = {"model": {"source": str(tiny / "model")}, "task": "sequence-classification",
            "dataset": {"source": str(tiny / "data"), "eval": "dev", "maxLength": 32},
            "strategy": {"type": "full"}, "training": {"epochs": 1, "batchSize": 8, "learningRate": 1e-2},
            "evaluation": {"split": "test", "gates": [gate]}, "resources": resources}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob",
                                    "metadata": {"name": "local-eval"}, "spec": spec}))
    return path


def _run(manifest: Path, out: Path, capsys) -> tuple[int, dict, str]:
    capsys.readouterr()
    code = cli.main(["run", str(manifest), "--output", str(out), "--no-progress", "--metrics-port", "0"])
    captured = capsys.readouterr()
    return code, yaml.safe_load(captured.out)["status"], captured.err


@pytest.mark.parametrize("gate, code, passed", [({"metric": "eval_accuracy", "min": 0.0}, 0, True),
                                                ({"metric": "eval_loss", "max": 0.0}, 2, False)])
def test_finetune_run_prints_the_evaluation_block(tiny, tmp_path, capsys, gate, code, passed):
    exit_code, status, err = _run(_manifest(tiny, tmp_path, gate), tmp_path / "out", capsys)
    assert exit_code == code
    written = json.loads((tmp_path / "out" / "summary.json").read_text())["evaluation"]
    evaluation = status["evaluation"]
    assert {k: v for k, v in evaluation.items() if k != "headline"} == written  # the numbers status would hold
    assert evaluation["passed"] is passed and evaluation["split"] == "test"
    assert evaluation["headline"] == f"{gate['metric']}={evaluation['gates'][0]['value']:.4g}"
    assert status["usage"]["samples"] == 64
    if not passed:
        assert status["phase"] == "Failed"
        assert "error: GateFailed: the final model's eval_loss is" in err


def test_finetune_plan_prices_an_hour_of_the_requests(tiny, tmp_path, capsys):
    prices = tmp_path / "prices.yaml"
    prices.write_text("currency: EUR\ndefault: {gpuHour: 2.0, cpuCoreHour: 0.5, memoryGibHour: 0.25}\n"
                      "nodeSelectors:\n  - nodeSelector: {gpu: h100}\n    gpuHour: 8.0\n")
    manifest = _manifest(tiny, tmp_path, {"metric": "eval_f1", "min": 0.5}, gpus=2, nodes=2, cpu="4",
                         memory="8Gi", nodeSelector={"gpu": "h100"})
    capsys.readouterr()
    assert cli.main(["plan", str(manifest), "--prices", str(prices)]) == 0
    plan = yaml.safe_load(capsys.readouterr().out)
    assert plan["estimatedCost"] == {"perHour": {"amount": 2 * 2 * 8.0 + 8 * 0.5 + 16 * 0.25, "currency": "EUR"}}
    prices.write_text("default: {gpuHour: -1}\n")
    assert cli.main(["plan", str(manifest), "--prices", str(prices)]) == 2
    assert "--prices" in capsys.readouterr().err
