"""Experiment tracking of a run, on rank 0 only: TensorBoard event files and, when ``tracking.mlflow`` is set, an
MLflow run.

TensorBoard is the zero-configuration default: event files in ``<output>/tensorboard`` (tensorboardX's writer, the
lightest package that writes real event files; ``tensorboard --logdir`` reads them). A resumed attempt purges the
steps after its checkpoint, so the curves show what the model went through once. MLflow gets the spec as params,
the base model and dataset as lineage (tags and dataset inputs), metrics at every log step and evaluation, and the
final model's location; mlflow_run.py sends them from a thread. Nothing here fails training: a tracking failure
becomes ``degraded`` in the summary's ``tracking`` part, which the operator turns into a TrackingDegraded condition.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from finetune_trainer import locations
from finetune_trainer.config import TrainerConfig
from finetune_trainer.mlflow_run import MlflowRun

log = logging.getLogger("finetune_trainer")

TENSORBOARD_DIR = "tensorboard"
TRACKING_DIR = "tracking"
FLUSH_ENV = "FINETUNE_TRACKING_FLUSH_SECONDS"  # how long the end of a run waits for MLflow (default 30)


def spec_params(config: TrainerConfig) -> dict[str, str]:
    """The spec as flat MLflow params (``training.learningRate``, ``strategy.lora.r``, ...)."""
    wire = config.wire()
    params: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        else:
            params[prefix] = str(value)

    for part in ("model", "task", "dataset", "strategy", "training", "output"):
        walk(part, wire.get(part))
    params.pop("model.secretRef.name", None)
    params.pop("dataset.secretRef.name", None)
    return params


class Tracking:
    def __init__(self, config: TrainerConfig, output: Path, main: bool):
        self.config, self.output = config, output
        self.enabled = main
        self.mlflow: MlflowRun | None = None
        self._writer = None
        self._problems: list[str] = []

    def start(self, step: int) -> None:
        """Open the writers once the run knows where it starts (``step`` > 0 after a resume)."""
        if not self.enabled:
            return
        spec, cfg = self.config.tracking, self.config
        if spec.tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self._writer = SummaryWriter(str(self.output / TENSORBOARD_DIR), purge_step=step + 1 if step else None,
                                             flush_secs=30)
            except Exception as error:  # noqa: BLE001 - e.g. a read-only output: training goes on
                self._problem(f"TensorBoard: {type(error).__name__}: {error}")
        if spec.mlflow is not None:
            flush = float(os.environ.get(FLUSH_ENV, "30"))
            mlflow = MlflowRun(spec.mlflow, cfg.name, self.output / TRACKING_DIR, flush_seconds=flush)
            try:
                mlflow.start(spec_params(cfg), {
                    "finetune.job": cfg.name, "finetune.task": str(cfg.task),
                    "finetune.base_model": f"{cfg.model.source}@{cfg.model.revision}",
                    "finetune.dataset": cfg.dataset.source, "finetune.strategy": str(cfg.strategy.type),
                })
                mlflow.log_dataset(f"{cfg.name}-train", cfg.dataset.source, "train")
            except ImportError as error:  # a custom image without mlflow-skinny
                self._problem(f"MLflow: the trainer image lacks its client (pip install mlflow-skinny): {error}")
                return
            self.mlflow = mlflow

    def log(self, step: int, values: dict[str, float]) -> None:
        """Metrics at a log step or an evaluation, named as the trainer names them (train_loss, eval_f1, ...)."""
        if self._writer is not None:
            try:
                for key, value in values.items():
                    self._writer.add_scalar(key, value, step)
            except Exception as error:  # noqa: BLE001
                self._problem(f"TensorBoard: {type(error).__name__}: {error}")
                self._writer = None
        if self.mlflow is not None:
            self.mlflow.log(step, values)

    def finish(self, outcome: str, model_location: str | None) -> dict[str, Any] | None:
        """Close the writers; the summary's ``tracking`` part (None when nothing tracked)."""
        if not self.enabled:
            return None
        part: dict[str, Any] = {}
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception as error:  # noqa: BLE001 - the run's own outcome matters more
                self._problem(f"TensorBoard: {type(error).__name__}: {error}")
            part["tensorboard"] = locations.user_location(self.output / TENSORBOARD_DIR, self.config.output.location)
        if self.mlflow is not None:
            status = {"Succeeded": "FINISHED", "Interrupted": "KILLED"}.get(outcome, "FAILED")
            tags = {"finetune.outcome": outcome}
            if model_location:
                tags["finetune.model_uri"] = model_location
            self.mlflow.finish(status, tags)
            part.update(mlflowRunId=self.mlflow.run_id, mlflowExperimentId=self.mlflow.experiment_id)
            if self.mlflow.degraded:
                self._problems.append(self.mlflow.degraded)
        if self._problems:
            part["degraded"] = "; ".join(self._problems)[:1024]
        return {k: v for k, v in part.items() if v is not None} or None

    def _problem(self, text: str) -> None:
        log.warning("tracking: %s; training goes on", text)
        self._problems.append(text)
