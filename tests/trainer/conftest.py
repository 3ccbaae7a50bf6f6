"""Trainer tests import their helpers as ``tiny_models`` (tests/tiny_models.py), wherever pytest is started.

Fixtures: every trainer test runs torch on one thread (``OMP_NUM_THREADS=1``, which the trainer honours, and
subprocesses inherit): tiny models gain nothing from more, and a second thread spin-waits on a busy machine.
``tiny_model_dir(arch, auto_class)`` saves a tiny model once per session; ``sentiment_dir`` is a train/dev csv
directory; ``job(...)`` builds a TrainerConfig for a tiny sequence-classification run.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiny_models import save_tiny_model, sentiment_rows, write_rows  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    made: dict[tuple, Path] = {}

    def build(arch: str, auto_class: str = "AutoModelForSequenceClassification", **overrides) -> Path:
        key = (arch, auto_class, tuple(sorted(overrides.items())))
        if key not in made:
            path = tmp_path_factory.mktemp(f"model-{arch}")
            if auto_class == "AutoModelForSequenceClassification":
                overrides.setdefault("num_labels", 2)
            made[key] = save_tiny_model(arch, auto_class, path, **overrides)
        return made[key]

    return build


@pytest.fixture(scope="session")
def sentiment_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sentiment")
    write_rows(sentiment_rows(96, seed=0), path / "train.csv")
    write_rows(sentiment_rows(32, seed=1), path / "dev.csv")
    return path


@pytest.fixture
def job(tmp_path, sentiment_dir):
    """``job(model_dir, strategy={...}, **training)`` → a TrainerConfig writing to ``tmp_path/out``."""
    from finetune_trainer.config import TrainerConfig

    def make(model: Path, strategy: dict | None = None, data: Path | None = None, output: Path | None = None,
             dataset: dict | None = None, **training) -> TrainerConfig:
        return TrainerConfig.model_validate({
            "name": "tiny", "model": {"source": str(model)}, "task": "sequence-classification",
            "dataset": {"source": str(data or sentiment_dir), "maxLength": 32, **(dataset or {})},
            "strategy": strategy or {"type": "full"},
            "training": {"epochs": 1, "batchSize": 8, "learningRate": 1e-2, "warmupRatio": 0.0, **training},
            "output": {"location": str(output or tmp_path / "out")}, "metricsPort": 0,
        })

    return make
