"""Locations as users write them and as the trainer opens them, both ways.

A model, dataset or output location is ``pvc://claim/path`` (a PersistentVolumeClaim), a URI of a remote scheme
(``hf://``, ``pkg://``, ``s3://``) or a plain path. In a trainer pod the operator mounts each claim at
``$FINETUNE_PVC_ROOT/<claim>`` and hands the trainer the locations exactly as the user wrote them; ``local_path``
maps a location to the path the trainer opens, and ``user_location`` maps a path under the output back to the
location the user wrote, which is what the summary (and so the FineTuneJob's status) reports.

An ``s3://bucket/prefix`` output is written to a local staging copy (``$FINETUNE_STAGING_ROOT/s3/bucket/prefix``)
and uploaded from there as each part is complete (finetune_trainer.mirror); its paths map back to ``s3://`` URIs.

Standard library only: the operator imports it too (which claims to mount, which locations only a cluster has).
"""

from __future__ import annotations

import os
from pathlib import Path

PVC_SCHEME = "pvc://"
S3_SCHEME = "s3://"
REMOTE_SCHEMES = ("hf://", "pkg://", S3_SCHEME)
PVC_ROOT_ENV = "FINETUNE_PVC_ROOT"
DEFAULT_PVC_ROOT = "/mnt/pvc"
STAGING_ROOT_ENV = "FINETUNE_STAGING_ROOT"
DEFAULT_STAGING_ROOT = "/tmp/finetune-staging"
CACHE_DIR_ENV = "FINETUNE_CACHE_DIR"  # where downloads of s3:// sources are kept (finetune_trainer.cache)
_MAPPED = (PVC_SCHEME, S3_SCHEME)  # the schemes whose local paths map back to the location


def claim_of(location: str | None) -> str | None:
    """The claim of a ``pvc://claim/path`` location; None for any other location."""
    if location and location.startswith(PVC_SCHEME):
        return location[len(PVC_SCHEME):].split("/", 1)[0]
    return None


def local_path(location: str) -> Path:
    """The path the trainer opens for ``location``: a claim's mount for ``pvc://``, the staging copy of an
    ``s3://`` output, else the path itself."""
    if location.startswith(PVC_SCHEME):
        root = Path(os.environ.get(PVC_ROOT_ENV, DEFAULT_PVC_ROOT))
        return root / location[len(PVC_SCHEME):].strip("/")
    if location.startswith(S3_SCHEME):
        root = Path(os.environ.get(STAGING_ROOT_ENV, DEFAULT_STAGING_ROOT))
        return root / "s3" / location[len(S3_SCHEME):].strip("/")
    return Path(location).expanduser()


def user_location(path: Path, location: str) -> str:
    """``path``, which lies under ``local_path(location)``, as the user would name it: under their ``pvc://`` or
    ``s3://`` URI when that is what they wrote, else the path itself."""
    if not location.startswith(_MAPPED):
        return str(path)
    relative = path.relative_to(local_path(location)).as_posix()
    return f"{location.rstrip('/')}/{relative}"
