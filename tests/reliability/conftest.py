"""Fixtures of the reliability and security tests (issue 7): the real control plane (the cluster tests' fixture,
reused), tiny models and data built once per session, and a notebook of figures that RELIABILITY.md reports.

Figures: every test records what it tried and what survived with ``figures.add(section, key, value)``; the
terminal summary prints them and ``FTO_RELIABILITY_FIGURES=path.json`` writes them to a file.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:  # pyproject's pythonpath does this under pytest; kept for direct imports
    sys.path.insert(0, str(TESTS))

# The session-scoped plane fixture of tests/cluster, shared (a plane that is up is reused, never restarted).
from cluster.conftest import ControlPlane, control_plane, wait_for  # noqa: E402,F401

HERE = Path(__file__).resolve().parent
FIGURES_ENV = "FTO_RELIABILITY_FIGURES"


class Figures:
    """section -> key -> value, thread-safe; the numbers behind RELIABILITY.md."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def add(self, section: str, key: str, value: Any) -> None:
        with self._lock:
            self.data.setdefault(section, {})[key] = value

    def inc(self, section: str, key: str, by: int = 1) -> None:
        with self._lock:
            bucket = self.data.setdefault(section, {})
            bucket[key] = bucket.get(key, 0) + by


FIGURES = Figures()


@pytest.fixture(scope="session")
def figures() -> Figures:
    return FIGURES


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001 - pytest hook
    if not FIGURES.data:
        return
    terminalreporter.section("reliability figures")
    for section, values in sorted(FIGURES.data.items()):
        if section.startswith("messages"):  # one line per case: in the file only
            terminalreporter.write_line(f"{section}: {len(values)} (see {FIGURES_ENV})")
            continue
        terminalreporter.write_line(f"{section}:")
        for key, value in values.items():
            terminalreporter.write_line(f"  {key}: {value}")
    path = os.environ.get(FIGURES_ENV)
    if path:
        previous = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
        for section, values in FIGURES.data.items():
            previous.setdefault(section, {}).update(values)
        Path(path).write_text(json.dumps(previous, indent=1, sort_keys=True, default=str) + "\n")
        terminalreporter.write_line(f"figures written to {path}")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny models and data under one root, laid out like a claim: ``<root>/pvc/ckpt/{models,data}/...``, so the
    same files serve local paths and ``pvc://ckpt/...`` sources (the pod's mount root is ``<root>/pvc``).

    models/bert6      6-block BERT, sequence classification, 2 labels (the corpus' model)
    models/bert4      4-block BERT for training runs (faults, security)
    models/notamodel  a directory whose config.json is not JSON
    data/reviews      train.csv (32 rows) + validation.csv (16 rows): text,label
    data/big          train.csv (1200 rows) + validation.csv (16 rows), for runs that must last a while
    data/garbage      train.parquet holding random bytes
    data/ragged       train.csv with a row that has more fields than the header
    data/object       train.json holding a JSON object, not a list of records
    data/empty        a directory with no data files
    data/onerow       train.csv with a single row and no eval split
    """
    pytest.importorskip("torch")
    import tiny_models

    root = tmp_path_factory.mktemp("tiny")
    claim = root / "pvc" / "ckpt"
    models, data = claim / "models", claim / "data"
    tiny_models.save_tiny_model("bert", "AutoModelForSequenceClassification", models / "bert6", num_labels=2,
                                num_hidden_layers=6)
    tiny_models.save_tiny_model("bert", "AutoModelForSequenceClassification", models / "bert4", num_labels=2)
    (models / "notamodel").mkdir(parents=True)
    (models / "notamodel" / "config.json").write_text("{ this is not json")
    tiny_models.write_sentiment_csv(data / "reviews" / "train.csv", n=32)
    tiny_models.write_sentiment_csv(data / "reviews" / "validation.csv", n=16, seed=1)
    tiny_models.write_sentiment_csv(data / "big" / "train.csv", n=1200, seed=2)
    tiny_models.write_sentiment_csv(data / "big" / "validation.csv", n=16, seed=3)
    (data / "garbage").mkdir(parents=True)
    (data / "garbage" / "train.parquet").write_bytes(os.urandom(4096))
    (data / "ragged").mkdir(parents=True)
    (data / "ragged" / "train.csv").write_text("text,label\ngood film,1\nbad,film,0,extra\nfine,1\n")
    (data / "object").mkdir(parents=True)
    (data / "object" / "train.json").write_text('{"text": "a single object", "label": 1}')
    (data / "empty").mkdir(parents=True)
    (data / "onerow").mkdir(parents=True)
    (data / "onerow" / "train.csv").write_text("text,label\nthe only row,1\n")
    return root


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Path]:
    yield tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
