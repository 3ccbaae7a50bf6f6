"""Load the raw train and eval splits a ``dataset`` spec names.

Sources: a file (the train split); a directory of ``<split>.<ext>`` files (``train.tsv``, ``dev.tsv``, ...); a
directory written by ``datasets``' ``save_to_disk``; ``pvc://claim/dir`` for either; ``hf://name?config=c`` from
the Hub when it is reachable. Formats: csv, tsv (GLUE style: a byte-order mark and bare quotes, so no quoting),
json (a list of records, or an object holding one), jsonl, parquet; ``auto`` goes by the file extension.

The eval split is the named ``dataset.eval``; else a split or file called validation, dev or test; else
``evalFraction`` (default 0.1) of train held out with the seed. Everything is loaded into memory (no cache files
next to read-only data); problems are ``DataError``s that name the field.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

from finetune_trainer.config import DataFormat, DatasetSpec
from finetune_trainer.errors import DataError
from finetune_trainer.locations import local_path
from finetune_trainer.tasks.base import RawSplits

EXTENSIONS = {".csv": DataFormat.CSV, ".tsv": DataFormat.TSV, ".json": DataFormat.JSON, ".jsonl": DataFormat.JSONL,
              ".parquet": DataFormat.PARQUET}
EVAL_NAMES = ("validation", "dev", "test")
DEFAULT_EVAL_FRACTION = 0.1


def load_raw(spec: DatasetSpec, seed: int) -> RawSplits:
    """The train split and the eval split (or None when train is too small to hold anything out)."""
    import datasets

    datasets.disable_caching()
    splits = _find_splits(spec)
    if spec.train not in splits:
        raise DataError(f'dataset.train "{spec.train}" is not in {spec.source}; it has {sorted(splits)}',
                        field="dataset.train")
    train = splits[spec.train]()
    eval_name = _eval_split_name(spec, splits)
    if eval_name is not None:
        eval_split = splits[eval_name]()
    else:
        fraction = spec.eval_fraction or DEFAULT_EVAL_FRACTION
        if len(train) < 2:
            raise DataError(f"dataset.train has {len(train)} rows; at least 2 are needed to hold out an eval split",
                            field="dataset.train")
        held = train.train_test_split(test_size=fraction, seed=seed, shuffle=True)
        train, eval_split = held["train"], held["test"]
    for name, split, field in ((spec.train, train, "dataset.train"), (eval_name or "held-out eval", eval_split,
                                                                      "dataset.eval")):
        if len(split) == 0:
            raise DataError(f'{field}: split "{name}" of {spec.source} is empty', field=field)
    return RawSplits(train=train, eval=eval_split)


def load_split(spec: DatasetSpec, name: str, field: str) -> Any:
    """One more named split of the source (evaluation.split), checked like train and eval."""
    import datasets

    datasets.disable_caching()
    splits = _find_splits(spec)
    if name not in splits:
        raise DataError(f'{field} "{name}" is not in {spec.source}; it has {sorted(splits)}', field=field)
    split = splits[name]()
    if len(split) == 0:
        raise DataError(f'{field}: split "{name}" of {spec.source} is empty', field=field)
    return split


def _eval_split_name(spec: DatasetSpec, splits: dict) -> str | None:
    if spec.eval is not None:
        if spec.eval not in splits:
            raise DataError(f'dataset.eval "{spec.eval}" is not in {spec.source}; it has {sorted(splits)}',
                            field="dataset.eval")
        return spec.eval
    if spec.eval_fraction is not None:
        return None
    return next((name for name in EVAL_NAMES if name in splits and name != spec.train), None)


def _find_splits(spec: DatasetSpec) -> dict[str, Callable[[], Any]]:
    """Every split the source offers, by name (a file's stem or name, or the saved dataset's split names), each as
    a function that loads it, so only the splits in use are read."""
    if spec.source.startswith("hf://"):
        return _loaded(_hub_splits(spec))
    path = local_path(spec.source)
    fmt = DataFormat(spec.format)
    if fmt == DataFormat.HUB:
        raise DataError('dataset.format "hub" needs a dataset.source of the form "hf://name?config=c"',
                        field="dataset.format")
    if not path.exists():
        raise DataError(f'dataset.source "{spec.source}": nothing at {path}', field="dataset.source")
    if path.is_file():
        return {spec.train: lambda: read_file(path, fmt)}
    if fmt == DataFormat.DATASETS or _is_saved_dataset(path):
        return _loaded(_saved_splits(path))
    files = [f for f in sorted(path.iterdir()) if f.is_file() and _format_of(f, fmt) is not None]
    if not files:
        raise DataError(f'dataset.source "{spec.source}": {path} holds no csv, tsv, json, jsonl or parquet files '
                        "and no saved dataset", field="dataset.source")
    splits = {}
    for f in files:
        splits.setdefault(f.stem, lambda f=f: read_file(f, fmt))
        splits.setdefault(f.name, lambda f=f: read_file(f, fmt))  # dataset.train may name the file itself
    return splits


def _loaded(splits: dict) -> dict[str, Callable[[], Any]]:
    return {name: (lambda d=d: d) for name, d in splits.items()}


def read_file(path: Path, fmt: DataFormat = DataFormat.AUTO):
    """One file as an in-memory ``datasets.Dataset``."""
    import datasets

    kind = _format_of(path, fmt)
    if kind is None:
        raise DataError(f"dataset.format: cannot tell the format of {path.name}; set dataset.format to one of "
                        "csv, tsv, json, jsonl, parquet", field="dataset.format")
    try:
        if kind in (DataFormat.CSV, DataFormat.TSV):
            return datasets.Dataset.from_list(_read_delimited(path, kind))
        if kind == DataFormat.JSONL:
            with path.open(encoding="utf-8-sig") as f:
                return datasets.Dataset.from_list([json.loads(line) for line in f if line.strip()])
        if kind == DataFormat.JSON:
            return datasets.Dataset.from_list(_json_records(path))
        import pyarrow.parquet as pq

        return datasets.Dataset(pq.read_table(path))
    except DataError:
        raise
    except (ValueError, OSError, TypeError, KeyError) as exc:
        raise DataError(f"dataset.source: cannot read {path.name} as {kind.value}: {exc}",
                        field="dataset.source") from exc


def _read_delimited(path: Path, kind: DataFormat) -> list[dict[str, str]]:
    # utf-8-sig drops a byte-order mark; TSV fields are never quoted (GLUE files contain bare quotes).
    tsv = kind == DataFormat.TSV
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t" if tsv else ",", quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
        header = next(reader, None)
        if not header:
            raise DataError(f"dataset.source: {path.name} is empty (no header row)", field="dataset.source")
        rows = []
        for number, values in enumerate(reader, start=2):
            if not values:
                continue
            if len(values) != len(header):
                raise DataError(f"dataset.source: {path.name} line {number} has {len(values)} fields, the header "
                                f"has {len(header)}", field="dataset.source")
            rows.append(dict(zip(header, values)))
    return rows


def _json_records(path: Path) -> list[dict]:
    with path.open(encoding="utf-8-sig") as f:
        data = json.load(f)
    if isinstance(data, dict):  # {"data": [...]} or {"version": ..., "data": [...]}
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"dataset.source: {path.name} is a JSON object; expected a list of records or an object "
                            "holding exactly one list", field="dataset.source")
        data = lists[0]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"dataset.source: {path.name} must hold a list of records (objects)", field="dataset.source")
    return data


def _format_of(path: Path, fmt: DataFormat) -> DataFormat | None:
    if fmt not in (DataFormat.AUTO, DataFormat.DATASETS, DataFormat.HUB):
        return fmt if EXTENSIONS.get(path.suffix.lower()) in (fmt, None) else None
    return EXTENSIONS.get(path.suffix.lower())


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _saved_splits(path: Path) -> dict:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path), keep_in_memory=True)
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"dataset.source: {path} is not a saved datasets directory: {exc}",
                        field="dataset.source") from exc
    return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}


def _hub_splits(spec: DatasetSpec) -> dict:
    import datasets

    url = urlparse(spec.source)
    name = (url.netloc + url.path).strip("/")
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    try:
        loaded = datasets.load_dataset(name, query.get("config"), revision=query.get("revision"))
    except Exception as exc:  # the hub client raises many types (connection, HTTP, missing config)
        raise DataError(
            f'dataset.source "{spec.source}" could not be loaded from the Hugging Face Hub ({exc}). If this machine '
            "is offline, save the dataset ahead of time (datasets' save_to_disk) and point dataset.source at it "
            '("pvc://claim/dir" or a local directory)', field="dataset.source") from exc
    return dict(loaded)
