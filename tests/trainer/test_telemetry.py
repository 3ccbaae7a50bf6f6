"""Prometheus endpoint while a real run trains (and gone after), and the JSON summary's shape and limits."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request

import pytest
from finetune_trainer.summary import Report, metric_key, termination_message, write
from finetune_trainer.telemetry import Telemetry, peak_flops
from finetune_trainer.train import run
from tiny_models import sentiment_rows, write_rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.read().decode()


def test_metrics_are_served_during_the_run_and_stop_after(tmp_path, tiny_model_dir, job):
    write_rows(sentiment_rows(200, seed=3), tmp_path / "data" / "train.jsonl")
    write_rows(sentiment_rows(8, seed=4), tmp_path / "data" / "dev.jsonl")
    port = free_port()
    config = job(tiny_model_dir("bert"), {"type": "partial", "layers": "last:1"}, data=tmp_path / "data",
                 batchSize=2, logEvery=2).model_copy(update={"metrics_port": port})
    url = f"http://127.0.0.1:{port}/metrics"
    seen: list[str] = []

    def poll():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not seen:
            try:
                text = scrape(url)
            except OSError:
                time.sleep(0.01)
                continue
            if 'finetune_trainer_train_loss{job="tiny"}' in text:
                seen.append(text)
            time.sleep(0.01)

    poller = threading.Thread(target=poll)
    poller.start()
    result = run(config)
    poller.join()

    assert seen, "no metrics scraped while training"
    text = seen[0]
    for name in ("step", "total_steps", "epoch", "train_loss", "learning_rate", "samples_per_second",
                 "tokens_per_second", "trainable_parameters", "total_parameters", "progress_percent",
                 "eta_seconds"):
        assert f'finetune_trainer_{name}{{job="tiny"}}' in text, name
    assert 'finetune_trainer_total_steps{job="tiny"} 100.0' in text
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
        assert 'finetune_trainer_eval_loss{job="a"} 0.5' in text
        assert 'finetune_trainer_eval_metric{job="a",metric="eval_f1"} 0.75' in text
        assert 'finetune_trainer_checkpoint_save_seconds_count{job="a"} 1.0' in text
        assert 'job="b"' not in text
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
                             "progress", "metrics", "parameters", "checkpoint", "output", "metricsUrl"]
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
