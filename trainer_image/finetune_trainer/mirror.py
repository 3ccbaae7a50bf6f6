"""An ``s3://bucket/prefix`` output: the local staging copy (locations.local_path) uploaded part by part.

The bucket holds the same layout as a local output: ``checkpoints/step-<N>/...``, ``model/...`` and
``summary.json``. S3 has no rename, so a part is committed the way checkpoints.py commits a directory: its
``COMPLETE`` marker is deleted first (re-saving a step), every file is uploaded, and ``COMPLETE`` is written last.
A reader (a resume, a user) takes only parts holding ``COMPLETE``, so an upload killed half-way is never taken as
complete, and the previous complete checkpoint is not touched until the new one is committed.

On several nodes each pod stages into its own ``/tmp``, so a checkpoint's files are spread over the nodes: each
rank's generators and, under FSDP, each rank's shard (sharded.py) are only on that rank's node. ``commit_checkpoint``
has each other node upload its ranks' files before the main rank uploads its own and writes ``COMPLETE``.

On start, ``restore`` replaces the staging copy's checkpoints with the newest complete one in the bucket: the
bucket is the truth (a local checkpoint whose upload never finished is not resumed from).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from finetune_trainer import summary
from finetune_trainer.checkpoints import COMPLETE, directory, staging_path
from finetune_trainer.errors import TrainerError
from finetune_trainer.objectstore import STORAGE_FAILURES, S3Uri, Store, is_s3
from finetune_trainer.runtime import Runtime
from finetune_trainer.tracking import TENSORBOARD_DIR

log = logging.getLogger(__name__)

FIELD = "output.location"
_STEP = re.compile(r"^checkpoints/step-(\d+)/(.+)$")


def _steps(store: Store, output: S3Uri) -> dict[int, list[str]]:
    """The keys of each step's checkpoint in the bucket, by step."""
    steps: dict[int, list[str]] = {}
    for obj in store.list(output.child("checkpoints"), FIELD):
        match = _STEP.match(obj.key[len(output.prefix):].lstrip("/"))
        if match:
            steps.setdefault(int(match.group(1)), []).append(obj.key)
    return steps


def _complete(steps: dict[int, list[str]]) -> list[int]:
    return sorted(step for step, keys in steps.items() if any(key.endswith("/" + COMPLETE) for key in keys))


def restore(store: Store, location: str, output: Path) -> int | None:
    """Make ``<output>/checkpoints`` hold exactly the newest complete checkpoint of the bucket (or nothing);
    returns its step."""
    uri = S3Uri.parse(location)
    steps = _steps(store, uri)
    complete = _complete(steps)
    local = directory(output)
    shutil.rmtree(local, ignore_errors=True)
    if not complete:
        return None
    step = complete[-1]
    staging = local / f".tmp-step-{step}"
    for obj in store.list(uri.child(f"checkpoints/step-{step}"), FIELD):
        store.download(obj, uri, staging / Path(obj.key).name, FIELD)
    os.rename(staging, local / f"step-{step}")
    log.info("restored checkpoint step %d from %s", step, uri.child(f"checkpoints/step-{step}"))
    return step


def upload_part(store: Store, location: str, path: Path, relative: str) -> str:
    """Upload the directory ``path`` as ``<location>/<relative>``, committed by ``COMPLETE`` last; returns its URI."""
    part = S3Uri.parse(location).child(relative)
    store.delete(part.bucket, [part.key(COMPLETE)], FIELD)
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != COMPLETE)
    for file in files:
        store.upload(file, part.child(file.relative_to(path).as_posix()), FIELD)
    store.put(part.child(COMPLETE), b"ok\n", FIELD)
    log.info("uploaded %d files to %s", len(files) + 1, part)
    return str(part)


def commit_checkpoint(store: Store, location: str, output: Path, step: int, rt: Runtime, keep: int) -> str | None:
    """Commit the checkpoint of ``step`` (saved by checkpoints.save) to the bucket; every rank calls it. Once the
    step's old marker is gone, the first rank of each node whose staging copy is its own uploads the files its
    ranks wrote there (the main rank's commit renamed a shared one away) and drops them; then the main rank
    uploads the rest, writes ``COMPLETE`` and prunes. Returns the checkpoint's URI on the main rank."""
    part = S3Uri.parse(location).child(f"checkpoints/step-{step}")
    if rt.is_main:
        store.delete(part.bucket, [part.key(COMPLETE)], FIELD)
    rt.barrier()
    staging = staging_path(output, step)
    if not rt.is_main and rt.local_rank == 0 and staging.is_dir():
        for file in sorted(p for p in staging.iterdir() if p.is_file()):
            store.upload(file, part.child(file.name), FIELD)
        shutil.rmtree(staging)
    rt.barrier()
    return upload_checkpoint(store, location, directory(output) / f"step-{step}", keep) if rt.is_main else None


def upload_checkpoint(store: Store, location: str, path: Path, keep: int) -> str:
    """Commit the local checkpoint ``path`` (``.../checkpoints/step-N``) to the bucket, then prune there: keep the
    newest ``keep`` complete checkpoints, drop the rest and every incomplete one (left by a killed upload)."""
    uri = upload_part(store, location, path, f"checkpoints/{path.name}")
    steps = _steps(store, S3Uri.parse(location))
    kept = set(_complete(steps)[-keep:])
    doomed = [key for step, keys in steps.items() if step not in kept for key in keys]
    # Markers first: a checkpoint being deleted stops counting as complete before any of its files go.
    markers = [key for key in doomed if key.endswith("/" + COMPLETE)]
    for keys in (markers, [key for key in doomed if key not in markers]):
        if keys:
            store.delete(S3Uri.parse(location).bucket, keys, FIELD)
    return uri


def upload_records(store: Store | None, location: str, output: Path, error: TrainerError | None) -> None:
    """The run's records next to the model in the bucket: summary.json and the TensorBoard event files
    (tracking.py writes them to the staging copy, and the summary names ``<output>/tensorboard``), so
    ``tensorboard --logdir s3://...`` shows the run. The run's outcome is already decided, so a failure here is only
    logged (the termination log carries the summary to the operator). Not after the storage itself failed: some
    servers (SeaweedFS) create a missing bucket on a write."""
    if store is None or not is_s3(location) or isinstance(error, STORAGE_FAILURES):
        return
    records = [output / summary.FILE] if (output / summary.FILE).is_file() else []
    records += sorted(p for p in (output / TENSORBOARD_DIR).rglob("*") if p.is_file())
    for path in records:
        try:
            store.upload(path, S3Uri.parse(location).child(path.relative_to(output).as_posix()), FIELD)
        except TrainerError as exc:
            log.warning("%s not uploaded: %s", path.relative_to(output), exc)
