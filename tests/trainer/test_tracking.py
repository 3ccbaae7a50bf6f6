"""Experiment tracking (tracking.py, mlflow_run.py) against a real `mlflow server` on localhost: a real run's params,
metrics at every log step and evaluation, lineage and final model read back through MlflowClient; TensorBoard event
files read back with TensorBoard's own reader; a server that is down, or comes back, never fails training."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from finetune_trainer.mlflow_run import RUN_FILE, MlflowRun
from finetune_trainer.output_spec import MlflowSpec
from finetune_trainer.tracking import FLUSH_ENV, TENSORBOARD_DIR, Tracking, spec_params
from finetune_trainer.train import run
from mlflow_server import mlflow_server


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


def tracked(config, **tracking):
    return config.model_copy(update={"tracking": config.tracking.model_validate(tracking)})


def test_a_run_is_logged_to_mlflow_and_read_back(tiny_model_dir, job, mlflow_uri, tmp_path):
    config = tracked(job(tiny_model_dir("bert"), {"type": "partial", "layers": "last:1"}, logEvery=3, evalEvery=6),
                     mlflow={"trackingUri": mlflow_uri, "experiment": "issue-17"})
    summary = run(config)
    assert summary["phase"] == "Succeeded"
    part = summary["tracking"]
    assert "degraded" not in part, part
    client = MlflowClient(tracking_uri=mlflow_uri)
    mlrun = client.get_run(part["mlflowRunId"])
    assert mlrun.info.status == "FINISHED" and mlrun.info.experiment_id == part["mlflowExperimentId"]
    assert client.get_experiment(mlrun.info.experiment_id).name == "issue-17"
    params = mlrun.data.params
    assert params["strategy.type"] == "partial" and params["strategy.layers"] == "last:1"
    assert float(params["training.learningRate"]) == config.training.learning_rate
    assert params["model.source"] == str(config.model.source) and params["task"] == "sequence-classification"
    tags = mlrun.data.tags
    assert tags["finetune.base_model"] == f"{config.model.source}@main"
    assert tags["finetune.dataset"] == config.dataset.source
    assert tags["finetune.model_uri"] == summary["output"]["location"]  # the final model
    assert tags["finetune.outcome"] == "Succeeded"
    [dataset_input] = mlrun.inputs.dataset_inputs
    assert config.dataset.source in dataset_input.dataset.source
    total = summary["progress"]["totalSteps"]
    logged = [m.step for m in client.get_metric_history(mlrun.info.run_id, "train_loss")]
    assert logged == sorted({*range(3, total + 1, 3), total})  # every log step, and the last
    evaluated = [m.step for m in client.get_metric_history(mlrun.info.run_id, "eval_accuracy")]
    assert evaluated and set(range(6, total + 1, 6)) <= set(evaluated)
    assert {"eval_loss", "learning_rate", "samples_per_second"} <= set(mlrun.data.metrics)
    # TensorBoard, always on: real event files with the same scalars.
    assert part["tensorboard"] == str(Path(config.output.location) / TENSORBOARD_DIR)
    events = EventAccumulator(part["tensorboard"])
    events.Reload()
    assert [e.step for e in events.Scalars("train_loss")] == logged
    assert [round(e.value, 5) for e in events.Scalars("eval_loss")] == [
        round(m.value, 5) for m in client.get_metric_history(mlrun.info.run_id, "eval_loss")]


def test_every_attempt_of_a_job_logs_to_the_same_run(mlflow_uri, tmp_path):
    spec = MlflowSpec(tracking_uri=mlflow_uri)
    first = MlflowRun(spec, "resumed-job", tmp_path)
    first.start({"task": "causal-lm"}, {})
    first.log(1, {"train_loss": 2.0})
    first.finish("KILLED", {})
    second = MlflowRun(spec, "resumed-job", tmp_path)  # attempt 2, same output
    second.start({"task": "causal-lm"}, {})
    second.log(2, {"train_loss": 1.0})
    second.finish("FINISHED", {})
    assert (tmp_path / RUN_FILE).is_file() and second.run_id == first.run_id and not second.degraded
    client = MlflowClient(tracking_uri=mlflow_uri)
    assert [m.step for m in client.get_metric_history(first.run_id, "train_loss")] == [1, 2]
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert client.get_experiment(first.experiment_id).name == "resumed-job"  # the job's name by default


def test_a_tracking_server_that_is_down_does_not_fail_training(tiny_model_dir, job, monkeypatch):
    monkeypatch.setenv(FLUSH_ENV, "3")
    config = tracked(job(tiny_model_dir("bert"), maxSteps=6, logEvery=2), mlflow={"trackingUri": "http://127.0.0.1:9"})
    started = time.monotonic()
    summary = run(config)
    assert summary["phase"] == "Succeeded" and summary["exitCode"] == 0
    assert "MLflow at http://127.0.0.1:9" in summary["tracking"]["degraded"]
    assert "not sent within 3s" in summary["tracking"]["degraded"]
    assert "mlflowRunId" not in summary["tracking"] and summary["tracking"]["tensorboard"]
    assert time.monotonic() - started < 120


class Outage:
    """A reverse proxy in front of the real server that answers 503 until ``restore`` (a server that was down)."""

    def __init__(self, upstream: str):
        outage = self
        self.up = threading.Event()
        self.refused = 0

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                if not outage.up.is_set():
                    outage.refused += 1
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
                request = urllib.request.Request(upstream + self.path, data=body, method=self.command,
                                                 headers={"Content-Type": self.headers.get("Content-Type", "")})
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        code, payload = response.status, response.read()
                except urllib.error.HTTPError as error:
                    code, payload = error.code, error.read()
                self.send_response(code)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = _forward

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_updates_made_while_the_server_was_down_arrive_once_it_is_back(mlflow_uri, tmp_path):
    outage = Outage(mlflow_uri)
    mlrun = MlflowRun(MlflowSpec(tracking_uri=outage.uri, experiment="outage"), "outage-job", tmp_path,
                      first_backoff=0.2)
    mlrun.start({"task": "seq2seq"}, {"finetune.job": "outage-job"})
    for step in range(1, 6):
        mlrun.log(step, {"train_loss": 1.0 / step})
    time.sleep(1.0)
    assert outage.refused and mlrun.degraded and "503" in mlrun.degraded  # retried, training unaware
    outage.up.set()
    mlrun.finish("FINISHED", {"finetune.model_uri": "pvc://ckpt/outage/model"})
    assert mlrun.degraded is None, mlrun.degraded
    client = MlflowClient(tracking_uri=mlflow_uri)
    history = client.get_metric_history(mlrun.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2, 3, 4, 5]
    assert client.get_run(mlrun.run_id).data.tags["finetune.model_uri"] == "pvc://ckpt/outage/model"
    outage.server.shutdown()


def test_only_rank_0_tracks_and_secrets_are_not_params(job, tmp_path):
    config = job(tmp_path / "model", dataset={"secretRef": {"name": "data-token"}})
    quiet = Tracking(config, tmp_path / "out", main=False)
    quiet.start(0)
    quiet.log(1, {"train_loss": 1.0})
    assert quiet.finish("Succeeded", None) is None and not (tmp_path / "out").exists()
    params = spec_params(config)
    assert "dataset.secretRef.name" not in params and params["training.batchSize"] == "8"


def test_the_example_manifest_trains_tracked_in_mlflow(mlflow_uri, tmp_path):
    from finetune_operator.manifest import load_finetunejob
    from finetune_operator.places import OnThisMachine, trainer_config

    example = Path(__file__).resolve().parents[2] / "examples" / "tracking-mlflow.yaml"
    ftj = load_finetunejob(example)
    config = trainer_config(ftj, OnThisMachine(example.parent, output_override=str(tmp_path / "out")))
    mlflow = config.tracking.mlflow.model_copy(update={"tracking_uri": mlflow_uri})  # the fixture's, not :5000
    config = config.model_copy(update={
        "tracking": config.tracking.model_copy(update={"mlflow": mlflow}),
        "training": config.training.model_copy(update={"max_steps": 4, "eval_every": 4})})
    summary = run(config)
    mlrun = MlflowClient(tracking_uri=mlflow_uri).get_run(summary["tracking"]["mlflowRunId"])
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == "quickstart-tracked"
    assert {"train_loss", "eval_loss", "eval_accuracy"} <= set(mlrun.data.metrics)
