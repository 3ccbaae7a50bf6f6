"""The real trainer as a separate process (`python -m finetune_trainer --config FILE`, as the pod runs it), for fault
injection: start it, watch its checkpoints appear, signal or kill it at a chosen moment, restart it, and check
what it left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

REPO = Path(__file__).resolve().parents[2]
STEP_DIR = re.compile(r"^step-(\d+)$")


def config(tiny: Path, output: Path, name: str = "fault", model: str = "bert4", data: str = "big",
           strategy: dict | None = None, **training: Any) -> dict[str, Any]:
    """A TrainerConfig (wire form) on the tiny models and data of conftest.tiny."""
    return {
        "name": name,
        "model": {"source": str(tiny / "pvc" / "ckpt" / "models" / model)},
        "task": "sequence-classification",
        "dataset": {"source": str(tiny / "pvc" / "ckpt" / "data" / data),
                    "columns": {"text": ["text"], "label": "label"}, "maxLength": 32},
        "strategy": strategy or {"type": "full"},
        "training": {"epochs": 1, "batchSize": 8, "learningRate": 1e-3, "logEvery": 1, **training},
        "output": {"location": str(output), "keepCheckpoints": 2},
        "metricsPort": 0,
    }


class TrainerRun:
    """One output folder, trained by one trainer process after another (each start resumes)."""

    def __init__(self, workdir: Path, trainer_config: dict[str, Any], env: dict[str, str] | None = None):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.output = Path(trainer_config["output"]["location"])
        self.config_file = workdir / "config.yaml"
        self.config_file.write_text(yaml.safe_dump(trainer_config))
        self.termination_log = workdir / "termination-log"
        self.log = workdir / "trainer.log"
        self.extra_env = env or {}
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    # ------------------------------------------------------------------------------------ process

    def start(self) -> None:
        self.termination_log.write_text("")  # the kubelet's file; the trainer writes it only if it exists
        env = {**os.environ, "FINETUNE_TERMINATION_LOG": str(self.termination_log), "HF_HUB_OFFLINE": "1",
               "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "FINETUNE_LOG_SECONDS": "0", **self.extra_env}
        self.starts += 1
        with self.log.open("a") as out:
            out.write(f"\n==== start {self.starts} {time.strftime('%X')}\n")
            self.proc = subprocess.Popen([sys.executable, "-m", "finetune_trainer", "--config", str(self.config_file)],
                                         stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.workdir)

    def wait(self, timeout: float = 300) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"trainer did not exit within {timeout}s:\n{self.tail()}") from None

    def run(self, timeout: float = 300) -> int:
        self.start()
        return self.wait(timeout)

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.send(signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_until(self, condition: Callable[[], Any], timeout: float = 180, interval: float = 0.002) -> Any:
        """Poll ``condition`` fast (checkpoint writes take milliseconds) while the trainer runs."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if not self.running:
                raise AssertionError(f"trainer exited ({self.proc.returncode}) before the moment came:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s:\n{self.tail()}")
            time.sleep(interval)

    # ------------------------------------------------------------------------------------ what it left

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text()[-chars:] if self.log.exists() else ""

    def last_start_log(self) -> str:
        return self.log.read_text().rsplit("==== start", 1)[-1]

    def checkpoint_root(self) -> Path:
        return self.output / "checkpoints"

    def entries(self) -> list[str]:
        try:
            return sorted(os.listdir(self.checkpoint_root()))
        except FileNotFoundError:
            return []

    def complete_steps(self) -> list[int]:
        root = self.checkpoint_root()
        return sorted(int(m.group(1)) for name in self.entries()
                      if (m := STEP_DIR.match(name)) and (root / name / "COMPLETE").is_file())

    def staging(self) -> list[str]:
        return [name for name in self.entries() if name.startswith(".tmp-step-")]

    def summary(self) -> dict[str, Any]:
        return json.loads((self.output / "summary.json").read_text())

    def termination(self) -> dict[str, Any]:
        text = self.termination_log.read_text()
        return json.loads(text) if text else {}

    def logged_steps(self) -> list[int]:
        """Optimizer steps the last process logged ("step N/M ...", one line a step: FINETUNE_LOG_SECONDS 0)."""
        return [int(m.group(1)) for m in re.finditer(r" step (\d+)/\d+ epoch", self.last_start_log())]


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Load every file of one checkpoint as a resume would; raise if anything is missing or unreadable."""
    import math

    import torch
    from safetensors.torch import load_file

    assert (path / "COMPLETE").is_file(), f"{path} has no COMPLETE marker"
    state = json.loads((path / "trainer_state.json").read_text())
    manifest = json.loads((path / "manifest.json").read_text())
    weights = load_file(str(path / "trainable.safetensors"))
    assert set(weights) == set(manifest["trainable"]), f"{path}: weights and manifest disagree"
    assert all(torch.isfinite(t).all() for t in weights.values()), f"{path}: non-finite weights"
    optimizer = torch.load(path / "optimizer.pt", weights_only=False)
    assert optimizer["state"], f"{path}: empty optimizer state"
    json.loads((path / "config.json").read_text())
    assert list(path.glob("rng-rank*.pt")), f"{path}: no RNG state"
    step = state["train"]["step"]
    assert path.name == f"step-{step}" and not math.isnan(step)
    return state
