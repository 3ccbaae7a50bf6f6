"""Downloads of ``s3://`` models and datasets, kept on a cache directory and reused.

A retry, or another job reading the same source, should not fetch the model again. An entry is keyed by the
source and what the server says about every object under it (key, size, ETag): a changed object is a new entry,
an unchanged source is a hit that downloads nothing (only the listing is read). ``$FINETUNE_CACHE_DIR`` is the
cache (the chart mounts a shared claim there when ``cache.claimName`` is set); unset, ``~/.cache/finetune``.

Safe against concurrent writers (two pods, two ranks): each download goes into its own temporary directory, which
is renamed into place in one step; whoever renames second finds the entry there and drops its copy. A download
killed half-way leaves only a ``.tmp-*`` directory, which no lookup takes and a later download removes once it
is a day old.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from finetune_trainer.errors import TrainerError
from finetune_trainer.locations import CACHE_DIR_ENV
from finetune_trainer.objectstore import S3Uri, Store, is_s3

log = logging.getLogger(__name__)

ABANDONED_SECONDS = 24 * 3600  # a .tmp-* download directory untouched this long belongs to a killed process


def root() -> Path:
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "finetune"


def fetch(store: Store, location: str, field: str, missing: type[TrainerError]) -> Path:
    """The local copy of everything under ``location`` (``s3://bucket/prefix``): the cached one when the source is
    unchanged, else a fresh download. A single object comes back as a directory holding that file."""
    uri = S3Uri.parse(location)
    objects = store.list(uri, field)
    if not objects:
        raise missing(f'{field} "{location}": no objects under it at {store.endpoint}', field=field)
    listing = sorted((o.key, o.size, o.etag) for o in objects)
    key = hashlib.sha256(json.dumps([uri.bucket, uri.prefix, listing]).encode()).hexdigest()[:40]
    entries = root() / "s3"
    final = entries / key
    if final.is_dir():
        log.info("%s: %d files from the cache (%s)", location, len(objects), final)
        return final
    entries.mkdir(parents=True, exist_ok=True)
    _drop_abandoned(entries)
    staging = entries / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
    try:
        for obj in objects:
            relative = Path(obj.key).name if obj.key == uri.prefix else obj.key[len(uri.prefix):].lstrip("/")
            store.download(obj, uri, staging / relative, field)
        try:
            os.rename(staging, final)
        except OSError:
            if not final.is_dir():  # not a concurrent writer's entry: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("%s: downloaded %d files into the cache (%s)", location, len(objects), final)
    return final


def _drop_abandoned(entries: Path) -> None:
    """Temporary directories of downloads killed long ago (a live download touches its directory as it goes)."""
    cutoff = time.time() - ABANDONED_SECONDS
    for path in entries.glob(".tmp-*"):
        try:
            if path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass  # another writer removed it


def local_source(store: Store | None, spec, field: str, missing: type[TrainerError]):
    """``spec`` (a model or dataset spec) reading its ``s3://`` source from the cached copy; others unchanged."""
    if not is_s3(spec.source):
        return spec
    return spec.model_copy(update={"source": str(fetch(store, spec.source, field, missing))})
