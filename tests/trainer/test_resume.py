"""Surviving interruptions, with the real entry point in a subprocess: kill -9 mid-epoch then restart resumes
from the last complete checkpoint and finishes; SIGTERM saves a checkpoint and exits with the retryable code;
a resumed run ends with exactly the weights of a run that was never interrupted."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from finetune_trainer.__main__ import load_config
from finetune_trainer.config import EXIT_RETRYABLE
from finetune_trainer.train import run
from safetensors.torch import load_file
from tiny_models import sentiment_rows, write_rows


@pytest.fixture
def long_job(tmp_path, tiny_model_dir):
    """A config file for a run of 100-200 small steps (about a second of training), checkpointing every 10."""
    data = tmp_path / "data"
    write_rows(sentiment_rows(200, seed=3), data / "train.jsonl")
    write_rows(sentiment_rows(16, seed=4), data / "dev.jsonl")

    def make(output, **training):
        config = {"name": "resume", "model": {"source": str(tiny_model_dir("bert"))},
                  "task": "sequence-classification", "dataset": {"source": str(data), "maxLength": 24},
                  "strategy": {"type": "partial", "layers": "last:2"},
                  "training": {"epochs": 2, "batchSize": 4, "learningRate": 1e-3, "saveEvery": 10, "logEvery": 5,
                               **training},
                  "output": {"location": str(output), "keepCheckpoints": 3}, "metricsPort": 0}
        path = tmp_path / f"{output.name}.json"
        path.write_text(json.dumps(config))
        return path

    return make


def start(config_path):
    return subprocess.Popen([sys.executable, "-m", "finetune_trainer", "--config", str(config_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def complete_steps(output):
    root = output / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name[5:]) for p in root.glob("step-*") if (p / "COMPLETE").is_file())


def wait_for_checkpoint(proc, output, at_least=1, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(complete_steps(output)) >= at_least:
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


def summary(output):
    return json.loads((output / "summary.json").read_text())


def test_kill_9_mid_epoch_then_restart_resumes_and_finishes(tmp_path, long_job):
    output = tmp_path / "out"
    config = long_job(output, batchSize=2)
    proc = start(config)
    wait_for_checkpoint(proc, output)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = complete_steps(output)
    assert saved and max(saved) < 100  # killed mid-epoch 0 (100 steps per epoch, 2 epochs)
    assert not (output / "summary.json").exists()

    restarted = subprocess.run([sys.executable, "-m", "finetune_trainer", "--config", str(config)],
                               capture_output=True, text=True, timeout=300)

    assert restarted.returncode == 0, restarted.stdout[-3000:]
    resumed = re.search(r"resumed from \S+: step (\d+)/200", restarted.stdout)
    assert resumed and int(resumed.group(1)) == max(saved)
    result = summary(output)
    assert result["phase"] == "Succeeded" and result["progress"]["step"] == 200
    assert result["checkpoint"]["step"] == 200 and (output / "model" / "model.safetensors").is_file()

    again = subprocess.run([sys.executable, "-m", "finetune_trainer", "--config", str(config)],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0
    # Nothing left to train: the export record of this config says the model is final (export.py).
    assert "not training again" in again.stdout and "resumed from" not in again.stdout
    assert {k: summary(output)[k] for k in ("phase", "progress", "checkpoint", "metrics", "outputs")} == {
        k: result[k] for k in ("phase", "progress", "checkpoint", "metrics", "outputs")}


def test_sigterm_saves_a_checkpoint_and_exits_retryable_then_resumes_exactly(tmp_path, long_job):
    output = tmp_path / "out"
    config = long_job(output, maxSteps=60)
    proc = start(config)
    wait_for_checkpoint(proc, output)
    proc.send_signal(signal.SIGTERM)
    logs = proc.communicate(timeout=120)[0]

    assert proc.returncode == EXIT_RETRYABLE, logs[-3000:]
    stopped = summary(output)
    assert stopped["phase"] == "Interrupted" and stopped["reason"] == "Interrupted"
    assert stopped["exitCode"] == EXIT_RETRYABLE
    assert stopped["checkpoint"]["step"] == stopped["progress"]["step"] == max(complete_steps(output))
    assert stopped["progress"]["step"] < 60

    resumed = subprocess.run([sys.executable, "-m", "finetune_trainer", "--config", str(config)],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:]

    straight = tmp_path / "straight"
    run(load_config(long_job(straight, maxSteps=60)))
    a = load_file(str(output / "model" / "model.safetensors"))
    b = load_file(str(straight / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a), [k for k in a if not (a[k] == b[k]).all()]


