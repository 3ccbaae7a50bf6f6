"""Run a FineTuneJob on this machine, without a cluster: the embedded default (`finetune run`).

The job goes through the same API validation as `kubectl apply` and the same trainer code as the pod; only the
locations differ. Relative local paths in the manifest are read relative to the manifest's folder (as kustomize
does), so a job runs the same from any working directory.
"""

from __future__ import annotations

from pathlib import Path

from finetune_operator.api import FineTuneJob, trainer_config
from finetune_trainer.config import TrainerConfig

CLUSTER_ONLY_SCHEMES = ("pvc://",)
REMOTE_SCHEMES = ("hf://", "pkg://", "s3://", "gs://")


class LocalRunError(ValueError):
    pass


def _local_source(source: str, field: str, base: Path) -> str:
    if source.startswith(CLUSTER_ONLY_SCHEMES):
        raise LocalRunError(
            f"{field}: {source!r} is a volume in the cluster; to run locally use a local path, hf:// or pkg:// "
            "(or apply the job to a cluster)")
    if source.startswith(REMOTE_SCHEMES) or Path(source).is_absolute():
        return source
    return str((base / source).resolve())


def default_output(job: FineTuneJob) -> Path:
    return Path("runs") / job.metadata.name


def local_output(job: FineTuneJob, override: str | None, base: Path) -> tuple[str, str | None]:
    """The local output folder, and a note when the manifest's own location could not be used here."""
    if override:
        return str(Path(override).resolve()), None
    location = job.spec.output.location
    if not location:
        return str(default_output(job).resolve()), None
    if location.startswith(CLUSTER_ONLY_SCHEMES + REMOTE_SCHEMES):
        fallback = default_output(job).resolve()
        return str(fallback), f"output.location {location!r} is not a local path; writing to {fallback}"
    return _local_source(location, "spec.output.location", base), None


def local_config(job: FineTuneJob, manifest: Path, output: str | None = None,
                 metrics_port: int = 0) -> tuple[TrainerConfig, str | None]:
    base = manifest.resolve().parent
    location, note = local_output(job, output, base)
    spec = job.spec
    localized = job.model_copy(update={"spec": spec.model_copy(update={
        "model": spec.model.model_copy(update={
            "source": _local_source(spec.model.source, "spec.model.source", base)}),
        "dataset": spec.dataset.model_copy(update={
            "source": _local_source(spec.dataset.source, "spec.dataset.source", base)}),
    })})
    return trainer_config(localized, location, metrics_port=metrics_port), note
