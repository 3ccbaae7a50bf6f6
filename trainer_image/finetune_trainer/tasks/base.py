"""What a task contributes to the training loop: its model class, its features, its batches, its metrics.

The loop in train.py knows nothing task-specific; each task module defines one ``TaskAdapter`` subclass, named
``<Kind>Task``, and registers it with ``@register``. ``get_task(name)`` returns the adapter for a config's
``task``. Columns are resolved and tokenized through columns.py and evaluated through evaluation.py, so every task
checks its data and reports a missing column the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from finetune_trainer.batching import TokenBudget
from finetune_trainer.config import DatasetSpec, Task, TrainingSpec


PAD_MULTIPLE = 8


def pad_multiple(tokenizer: Any, rows: list[dict[str, Any]]) -> int | None:
    """What a batch's padded width is rounded up to: 8, so batches come in a few widths, not one per length.
    Each new width makes oneDNN (torch's CPU matmuls) build and cache kernels for every matmul of the model; with
    a width per length, a bf16 run on AMX grew by 800 MiB over 100 steps of all-MiniLM on MRPC and rounding cut
    that at the same speed (BENCHMARKS.md §2). GPUs' tensor cores like multiples of 8 as well. None (the longest
    row as it is) where rounding up would pass the tokenizer's ``model_max_length``."""
    longest = max((len(r["input_ids"]) for r in rows), default=0)
    rounded = -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE
    limit = getattr(tokenizer, "model_max_length", None)
    return PAD_MULTIPLE if not isinstance(limit, int) or rounded <= limit else None


@dataclass
class RawSplits:
    """The untokenized data as loaded by data.py: a train split and an eval split (``datasets.Dataset``)."""

    train: Any
    eval: Any | None


@dataclass
class PreparedData:
    """Tokenized features ready for batching.

    ``train``/``eval`` are ``datasets.Dataset`` objects whose columns are exactly what ``collate`` reads, plus a
    ``length`` column (tokens per example) used for length-grouped batching and the tokens/s metric.
    ``eval_examples`` keeps the raw eval rows for tasks whose metrics need the source text (QA, seq2seq).
    ``model_kwargs`` go to ``from_pretrained`` (num_labels, id2label, label2id, ...).
    """

    train: Any
    eval: Any | None
    eval_examples: Any | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


class TaskAdapter(ABC):
    task: ClassVar[Task]
    auto_model: ClassVar[str]  # name of the transformers Auto class, e.g. "AutoModelForSequenceClassification"
    # Every metric ``evaluate`` reports -> whether a higher value is better (what early stopping compares by).
    higher_is_better: ClassVar[dict[str, bool]]
    # training.batchTokens as the task counts its batches' tokens, set by ``configure`` (causal LM only).
    budget: TokenBudget | None = None

    def configure(self, training: TrainingSpec) -> None:
        """Take the training options that change how this task builds its batches (e.g. causal-LM packing)."""

    @abstractmethod
    def prepare(self, raw: RawSplits, tokenizer: Any, dataset: DatasetSpec) -> PreparedData:
        """Validate columns (raise DataError naming the missing column and the ones present), tokenize."""

    def collate(self, tokenizer: Any, features: list[dict[str, Any]]) -> dict[str, Any]:
        """Pad one batch to its own longest row, rounded up to ``pad_multiple`` (dynamic padding). Tasks with labels
        per token override this."""
        from transformers import DataCollatorWithPadding

        rows = [{k: v for k, v in f.items() if k != "length"} for f in features]
        return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_multiple(tokenizer, rows),
                                       return_tensors="pt")(rows)

    def loss_units(self, batch: dict[str, Any]) -> int | None:
        """What the model's loss of ``batch`` is a mean over (e.g. labelled tokens), so micro-batches of a step
        weigh by it; None: the micro-batches weigh equally."""
        return None

    @abstractmethod
    def evaluate(self, model: Any, data: PreparedData, tokenizer: Any, batch_size: int, device: Any) -> dict[str, float]:
        """Run the eval split; return metrics named ``eval_*`` (``eval_loss`` whenever the task has a loss)."""


_REGISTRY: dict[str, type[TaskAdapter]] = {}


def register(cls: type[TaskAdapter]) -> type[TaskAdapter]:
    _REGISTRY[Task(cls.task).value] = cls
    return cls


def get_task(name: str) -> TaskAdapter:
    if not _REGISTRY:
        from finetune_trainer import tasks  # noqa: F401  (importing the package registers every task)
    try:
        return _REGISTRY[Task(name).value]()
    except KeyError:
        raise ValueError(f"task {name!r} has no trainer implementation; available: {sorted(_REGISTRY)}") from None
