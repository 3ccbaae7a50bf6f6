"""Column plumbing shared by the task adapters: which raw column plays which role, and which feature keys a model
takes.

A role is a ``ColumnMap`` field (``tokens``, ``question``, ``prompt``, ...); the user maps it to a column under
``dataset.columns``, or the task's conventional column name applies. A missing column is a permanent data error
that names the spec field to fix and lists what the data does have.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from finetune_trainer.config import DatasetSpec
from finetune_trainer.errors import DataError
from finetune_trainer.tasks.base import RawSplits


def splits(raw: RawSplits) -> list[tuple[str, Any]]:
    """The loaded splits with the names errors use for them."""
    return [(name, split) for name, split in (("train", raw.train), ("eval", raw.eval)) if split is not None]


def _present(columns: list[str]) -> str:
    return f"columns present: {', '.join(columns) or '(none)'}"


def missing_column(role: str, column: str, split_name: str, present: list[str], hint: str = "") -> DataError:
    return DataError(
        f"dataset.columns.{role}: column {column!r} is not in dataset.{split_name}; {_present(present)}"
        + (f"; {hint}" if hint else ""),
        field=f"dataset.columns.{role}",
    )


def check_columns(raw: RawSplits, roles: dict[str, Sequence[str]]) -> None:
    """Every split has every column of every role (a role may take several columns, e.g. a text pair)."""
    for split_name, split in splits(raw):
        for role, columns in roles.items():
            for column in columns:
                if column not in split.column_names:
                    raise missing_column(role, column, split_name, split.column_names)


def resolve_columns(raw: RawSplits, dataset: DatasetSpec, defaults: dict[str, str]) -> dict[str, str]:
    """Map each role in ``defaults`` to its column (the configured one, else the default) and check that every
    split has it."""
    resolved = {role: getattr(dataset.columns, role) or default for role, default in defaults.items()}
    check_columns(raw, {role: [column] for role, column in resolved.items()})
    return resolved


def conventional_columns(raw: RawSplits, role: str, candidates: Sequence[Sequence[str]]) -> list[str]:
    """For a role left unmapped with several conventional names: the first candidate the train split has all
    columns of."""
    present = raw.train.column_names
    for candidate in candidates:
        if all(column in present for column in candidate):
            return list(candidate)
    names = [" + ".join(candidate) for candidate in candidates]
    raise DataError(f"dataset.columns.{role} is unset and dataset.train has none of the conventional columns "
                    f"{names}; {_present(present)}. Set dataset.columns.{role}", field=f"dataset.columns.{role}")


def texts(batch: dict[str, list], columns: dict[str, str], role: str, indices: list[int], split_name: str,
          non_empty: bool = False) -> list[str]:
    """The ``role`` column of a batch of rows, checked to hold text (``non_empty``: not blank either)."""
    values = batch[columns[role]]
    for value, row in zip(values, indices):
        if not isinstance(value, str) or (non_empty and not value.strip()):
            raise DataError(f"dataset.columns.{role}: row {row} of the {split_name} split must be "
                            f"{'non-empty ' if non_empty else ''}text, got {value!r:.200}",
                            field=f"dataset.columns.{role}")
    return values


def model_inputs(tokenizer: Any, features: list[dict[str, Any]], *targets: str) -> list[dict[str, Any]]:
    """Keep only what the model's forward takes: the tokenizer's input names plus the task's target keys. Feature
    rows also carry ``length`` and task bookkeeping (offsets, example ids) that must not reach the model."""
    keep = set(tokenizer.model_input_names) | set(targets)
    return [{k: v for k, v in feature.items() if k in keep} for feature in features]


def tokenize_splits(raw: RawSplits, encode: Any) -> tuple[Any, Any | None]:
    """Run ``encode(batch, indices, split_name)`` over each split in batches; its output columns replace the raw
    ones (it may return more or fewer rows than it got). ``indices`` and ``split_name`` let errors point at the
    offending row."""

    def run(name: str, split: Any) -> Any:
        # An explicit fingerprint: datasets would otherwise pickle ``encode`` (and the tokenizer it holds) to
        # hash it, which fails on some Python/pyarrow builds. Caching is off (data.py), so it names, never reuses.
        return split.map(encode, batched=True, with_indices=True, fn_kwargs={"split_name": name},
                         remove_columns=split.column_names, desc=f"tokenizing {name}",
                         new_fingerprint=f"{split._fingerprint}-tokenized")

    return run("train", raw.train), run("eval", raw.eval) if raw.eval is not None else None


def by_role(split: Any, columns: dict[str, str], *roles: str) -> Any:
    """``split`` cut to the columns of ``roles`` and renamed after them: the raw rows ``evaluate`` reads (answers,
    references) without knowing the user's column mapping."""
    keep = {columns[role]: role for role in roles}
    return split.select_columns(list(keep)).rename_columns({name: role for name, role in keep.items() if name != role})
