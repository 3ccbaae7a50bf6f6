"""Prometheus endpoint while a real run trains (and gone after), and the JSON summary's shape and limits."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request

import pytest
from finetune_trainer.summary import Report, metric_key, termination_message, write
from finetune_trainer.telemetry import Telemetry, peak_flops
from finetune_trainer.train import run
from ports import free_port
from tiny_models import sentiment_rows, write_rows

def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.read().decode()


def run_while_polling(config, url: str, wanted, timeout: float = 300) -> tuple[dict, str | None]:
    """Run the trainer while another thread polls its metrics page; the summary and the first page ``wanted``."""
    seen: list[str] = []

    def poll():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not seen:
            try:
                text = scrape(url)
            except OSError:
                time.sleep(0.01)
                continue
            if wanted(text):
                seen.append(text)
            time.sleep(0.01)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        summary = run(config)
    finally:
        poller.join()
    return summary, (seen[0] if seen else None)


def test_metrics_are_served_during_the_run_and_stop_after(tmp_path, tiny_model_dir, job):
    write_rows(sentiment_rows(200, seed=3), tmp_path / "data" / "train.jsonl")
    write_rows(sentiment_rows(8, seed=4), tmp_path / "data" / "dev.jsonl")
    port = free_port()
    config = job(tiny_model_dir("bert"), {"type": "partial", "layers": "last:1"}, data=tmp_path / "data",
                 batchSize=2, logEvery=2).model_copy(update={"metrics_port": port})
    url = f"http://127.0.0.1:{port}/metrics"
    result, text = run_while_polling(config, url,
                                     lambda page: 'finetune_trainer_train_loss{finetunejob="tiny"}' in page)

    assert text, "no metrics scraped while training"
    for name in ("step", "total_steps", "epoch", "train_loss", "learning_rate", "samples_total",
                 "tokens_total", "trainable_parameters", "total_parameters", "progress_ratio",
                 "eta_seconds"):
        assert f'finetune_trainer_{name}{{finetunejob="tiny"}}' in text, name
    assert 'finetune_trainer_total_steps{finetunejob="tiny"} 100.0' in text
    assert "_created" not in text and 'job="' not in text.replace('finetunejob="', "")
    samples = float(re.search(r'^finetune_trainer_samples_total\{finetunejob="tiny"\} (\S+)$', text, re.M).group(1))
    step = float(re.search(r'^finetune_trainer_step\{finetunejob="tiny"\} (\S+)$', text, re.M).group(1))
    assert 2 * (step - 1) <= samples <= 2 * step  # batchSize 2, one rank: the counter moves with every step
    assert result["metricsUrl"].endswith(f":{port}/metrics")
    with pytest.raises(OSError):
        scrape(url)


def test_telemetry_registry_is_private_and_port_zero_picks_one():
    a, b = Telemetry("a"), Telemetry("b")
    try:
        url = a.start(0, host="127.0.0.1")
        b.start(0, host="127.0.0.1")
        a.record_eval({"eval_loss": 0.5, "eval_f1": 0.75})
        a.record_checkpoint(1.5)
        text = scrape(url)
        assert 'finetune_trainer_eval_loss{finetunejob="a"} 0.5' in text
        assert 'finetune_trainer_eval_metric{finetunejob="a",metric="eval_f1"} 0.75' in text
        assert 'finetune_trainer_checkpoint_save_seconds_count{finetunejob="a"} 1.0' in text
        assert 'finetune_trainer_checkpoints_total{finetunejob="a"} 1.0' in text
        assert "_created" not in text  # no timestamp series for the status scraper to mistake for metrics
        assert 'finetunejob="b"' not in text
    finally:
        a.stop()
        b.stop()


def test_peak_flops_from_the_device_name_or_the_environment(monkeypatch):
    assert peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("Tesla T4") == 65e12
    assert peak_flops("Unknown GPU") is None
    monkeypatch.setenv("FINETUNE_PEAK_FLOPS", "1e12")
    assert peak_flops("Unknown GPU") == 1e12


def test_summary_schema_and_metric_names():
    report = Report(output_location="pvc://ckpt/run")
    report.record_metrics({"eval_f1": 0.5, "eval_exact_match": 1.0, "train_loss": 0.25})
    summary = report.as_dict(None)
    assert list(summary) == ["phase", "reason", "message", "field", "exitCode", "startTime", "completionTime",
                             "progress", "metrics", "parameters", "checkpoint", "output", "outputs", "metricsUrl",
                             "downloadBytes", "usage", "tracking"]
    assert summary["usage"] == {"samples": 0, "tokens": 0}  # no MFU without a known GPU; no evaluation block unasked
    assert summary["metrics"] == {"evalF1": 0.5, "evalExactMatch": 1.0, "trainLoss": 0.25}
    assert summary["phase"] == "Succeeded" and summary["exitCode"] == 0
    assert metric_key("samples_per_second") == "samplesPerSecond"


def test_termination_message_fits_and_is_written_only_where_it_exists(tmp_path, monkeypatch):
    from finetune_trainer.errors import DataError

    report = Report(output_location=str(tmp_path))
    report.record_metrics({f"eval_metric_{i}": i for i in range(200)})
    summary = report.as_dict(DataError("x" * 5000, field="dataset.columns.label"))
    message = termination_message(summary)
    assert len(message.encode()) <= 4096
    assert json.loads(message)["field"] == "dataset.columns.label"

    log = tmp_path / "termination-log"
    monkeypatch.setenv("FINETUNE_TERMINATION_LOG", str(log))
    write(summary, tmp_path / "out")
    assert not log.exists()  # not created where Kubernetes did not mount one
    log.write_text("")
    write(summary, tmp_path / "out")
    assert json.loads(log.read_text())["phase"] == "Failed"
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["reason"] == "InvalidData"


def test_a_summary_that_cannot_shrink_enough_keeps_its_outcome_as_valid_json():
    outputs = [{"kind": "oci", "uri": f"oci://registry.example/models/run-{i}:{'t' * 80}", "digest": "sha256:" + "a" * 64}
               for i in range(60)]
    summary = {"phase": "Failed", "reason": "PushFailed", "message": "m" * 3000, "exitCode": 1,
               "checkpoint": {"location": "s3://bucket/run/checkpoint-9", "step": 9}, "outputs": outputs,
               "metrics": {"trainLoss": 0.5}}
    message = termination_message(summary)
    assert len(message.encode()) <= 4096
    kept = json.loads(message)  # never JSON cut mid-way: the operator would learn nothing of the outcome
    assert (kept["phase"], kept["reason"], kept["exitCode"]) == ("Failed", "PushFailed", 1)
    assert kept["checkpoint"]["step"] == 9 and "outputs" not in kept


def test_status_metrics_of_a_real_seq2seq_run_hold_only_training_metrics(tmp_path):
    """A real run that evaluates a seq2seq metric and writes checkpoints while the operator's scraper reads its page:
    status.metrics gets the training metrics only (no *_created timestamps, counters, GPU gauges)."""
    from finetune_operator.scrape import parse_trainer_metrics
    from finetune_trainer.config import TrainerConfig
    from finetune_trainer.tasks.base import get_task
    from tiny_models import save_tiny_model, translation_rows

    model = save_tiny_model("bart", get_task("seq2seq").auto_model, tmp_path / "model")
    write_rows(translation_rows(32), tmp_path / "data" / "train.jsonl")
    write_rows(translation_rows(8, seed=1), tmp_path / "data" / "validation.jsonl")
    port = free_port()
    config = TrainerConfig.model_validate({
        "name": "tiny-seq2seq", "model": {"source": str(model)}, "task": "seq2seq",
        "dataset": {"source": str(tmp_path / "data"), "maxLength": 16}, "strategy": {"type": "full"},
        "training": {"epochs": 3, "batchSize": 8, "learningRate": 3e-3, "evalEvery": 2, "saveEvery": 2,
                     "logEvery": 1},
        "output": {"location": str(tmp_path / "output")}, "metricsPort": port,
    })
    url = f"http://127.0.0.1:{port}/metrics"
    summary, page = run_while_polling(
        config, url, lambda text: "finetune_trainer_checkpoints_total" in text and 'metric="eval_chrf"' in text)

    assert summary["phase"] == "Succeeded" and summary["checkpoint"]
    assert page, "no page with a checkpoint and an evaluation scraped while training"
    metrics = parse_trainer_metrics(page)["metrics"]
    assert {"trainLoss", "learningRate", "evalLoss", "evalBleu", "evalChrf"} <= set(metrics)
    assert set(metrics) <= {"trainLoss", "learningRate", "evalLoss", "evalBleu", "evalChrf", "evalRougeL"}, metrics


def test_the_termination_message_keeps_the_gates_verdicts_when_it_must_shrink():
    from finetune_trainer.summary import TERMINATION_LIMIT, termination_message

    report = Report(output_location="/out")
    report.record_metrics({f"eval_metric_{i}": 0.5 for i in range(200)})
    report.evaluation = {"split": "test", "finalModel": "last", "step": 3, "passed": False,
                         "metrics": {f"evalMetric{i}": 0.5 for i in range(200)},
                         "gates": [{"metric": "eval_metric_7", "value": 0.5, "gate": ">= 0.9", "passed": False,
                                    "min": 0.9}]}
    message = termination_message(report.as_dict(None))
    assert len(message.encode()) <= TERMINATION_LIMIT
    evaluation = json.loads(message)["evaluation"]
    assert evaluation["metrics"] == {"evalMetric7": 0.5} and evaluation["gates"][0]["passed"] is False
