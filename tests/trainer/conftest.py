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


# ------------------------------------------------------------------------------------------ object storage
from s3_live import s3_server  # noqa: E402,F401  (the session's SeaweedFS, started only by tests that use it)


@pytest.fixture(scope="session")
def s3_inputs(s3_server, tiny_model_dir, sentiment_dir) -> dict[str, str]:  # noqa: F811
    """A tiny BERT and the sentiment csv files in a bucket: {"bucket", "model", "data"} as s3:// URIs."""
    bucket = s3_server.bucket("inputs")
    return {"bucket": bucket, "model": s3_server.upload_dir(tiny_model_dir("bert"), bucket, "models/bert"),
            "data": s3_server.upload_dir(sentiment_dir, bucket, "data/sentiment")}


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path):  # noqa: F811
    """This process talks to the S3 server through the standard AWS variables, as `finetune run` would, with its
    own staging and cache directories; returns the variables (for subprocesses)."""
    env = s3_server.env(FINETUNE_STAGING_ROOT=str(tmp_path / "staging"), FINETUNE_CACHE_DIR=str(tmp_path / "cache"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def s3_job(s3_inputs):
    """``s3_job(output_uri, storage=None, **training)`` → a TrainerConfig reading model and data from the bucket."""
    from finetune_trainer.config import TrainerConfig

    def make(output: str, storage: dict | None = None, model: str | None = None, keep: int = 2,
             **training) -> TrainerConfig:
        return TrainerConfig.model_validate({
            "name": "tiny-s3", "model": {"source": model or s3_inputs["model"]}, "task": "sequence-classification",
            "dataset": {"source": s3_inputs["data"], "maxLength": 32},
            "strategy": {"type": "full"},
            "training": {"epochs": 1, "batchSize": 16, "learningRate": 1e-2, "warmupRatio": 0.0, **training},
            "output": {"location": output, "keepCheckpoints": keep}, "storage": storage or {}, "metricsPort": 0,
        })

    return make
