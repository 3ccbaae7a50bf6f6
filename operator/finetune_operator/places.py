"""Where a FineTuneJob trains, and the one function that turns it into the trainer's config for that place.

A place decides only what differs between places: where the model and data are read from, where the output goes,
and the metrics port. Everything else in the config is the spec as the user wrote it.

- ``InPod``: a trainer pod (render.py). Locations stay as written; the trainer opens ``pvc://`` locations under
  the claims' mounts and reports them back as ``pvc://`` URIs (finetune_trainer.locations). An unset output goes
  to scratch space inside the pod. The operator's S3 defaults fill what a job's ``storage.s3`` leaves unset.
- ``OnThisMachine``: `finetune run` without a cluster. Relative paths are read relative to the manifest's folder
  (as kustomize does), so a job runs the same from any working directory; claims exist only in a cluster.
  ``s3://`` locations stay as written and are reached with this machine's AWS environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from finetune_operator.api import FineTuneJob
from finetune_operator.names import SCRATCH_OUTPUT  # scratch space of the pod: does not survive the attempt
from finetune_trainer.config import TrainerConfig
from finetune_trainer.locations import PVC_SCHEME, REMOTE_SCHEMES, S3_SCHEME
from finetune_trainer.output_spec import S3Spec, StorageSpec, TrackingSpec


class LocalRunError(ValueError):
    pass


class Place(Protocol):
    metrics_port: int

    def source(self, location: str, field: str) -> str:
        """Where the trainer reads the model or data the spec puts at ``location`` (``field`` names it)."""

    def output(self, ftj: FineTuneJob) -> str:
        """Where the trainer writes checkpoints and the model."""

    def storage(self, ftj: FineTuneJob) -> StorageSpec | None:
        """How the trainer reaches the object storage of the job's s3:// locations."""


def trainer_config(ftj: FineTuneJob, place: Place) -> TrainerConfig:
    """The trainer's config for ``ftj`` at ``place``: what the operator writes into an attempt's pods (render.py) and
    what `finetune run` trains."""
    spec = ftj.spec
    return TrainerConfig(
        name=ftj.metadata.name,
        model=spec.model.model_copy(update={"source": place.source(spec.model.source, "spec.model.source")}),
        task=spec.task,
        dataset=spec.dataset.model_copy(update={"source": place.source(spec.dataset.source, "spec.dataset.source")}),
        strategy=spec.strategy,
        training=spec.training,
        output=spec.output.model_copy(update={"location": place.output(ftj)}),
        storage=place.storage(ftj),
        evaluation=spec.evaluation,
        tracking=spec.tracking or TrackingSpec(),
        metrics_port=place.metrics_port,
    )


@dataclass(frozen=True)
class InPod:
    metrics_port: int
    # The operator's settings, for what a job's spec.storage.s3 leaves unset.
    s3_defaults: S3Spec = field(default_factory=S3Spec)

    def source(self, location: str, field: str) -> str:
        return location

    def output(self, ftj: FineTuneJob) -> str:
        return ftj.spec.output.location or SCRATCH_OUTPUT

    def storage(self, ftj: FineTuneJob) -> StorageSpec | None:
        spec = ftj.spec
        if not any(loc and loc.startswith(S3_SCHEME)
                   for loc in (spec.model.source, spec.dataset.source, spec.output.location)):
            return spec.storage
        own = (spec.storage.s3 if spec.storage else None) or S3Spec()
        defaults = self.s3_defaults.model_dump(exclude_none=True)
        return StorageSpec(s3=own.model_copy(update={k: v for k, v in defaults.items() if getattr(own, k) is None}))


@dataclass(frozen=True)
class OnThisMachine:
    manifest_dir: Path  # relative paths in the manifest are relative to this folder
    output_override: str | None = None  # `finetune run --output`
    metrics_port: int = 0  # 0: a free port

    def source(self, location: str, field: str) -> str:
        if location.startswith(PVC_SCHEME):
            raise LocalRunError(
                f"{field}: {location!r} is a volume in the cluster; to run locally use a local path, hf:// or pkg:// "
                "(or apply the job to a cluster)")
        if location.startswith(REMOTE_SCHEMES) or Path(location).is_absolute():
            return location
        return str((self.manifest_dir / location).resolve())

    def storage(self, ftj: FineTuneJob) -> StorageSpec | None:
        return ftj.spec.storage  # the rest comes from this machine's AWS environment, as for any AWS tool

    def output(self, ftj: FineTuneJob) -> str:
        if self.output_override:
            return str(Path(self.output_override).resolve())
        location = ftj.spec.output.location
        if not location or self.output_note(ftj):
            return str(self.default_output(ftj).resolve())
        return self.source(location, "spec.output.location")

    def output_note(self, ftj: FineTuneJob) -> str | None:
        """Why the manifest's own output location is not used here, if it is not."""
        location = ftj.spec.output.location
        if self.output_override or not location or location.startswith(S3_SCHEME) or not location.startswith(
                (PVC_SCHEME, *REMOTE_SCHEMES)):
            return None
        return f"output.location {location!r} is not a local path; writing to {self.default_output(ftj).resolve()}"

    @staticmethod
    def default_output(ftj: FineTuneJob) -> Path:
        return Path("runs") / ftj.metadata.name
