"""How every task evaluates: batched forward passes in eval mode over features stored by length, and a loss averaged
over the units it was computed on (tokens, features) rather than over batches of uneven size. The metrics
themselves are each task's own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from finetune_trainer.batching import rows as feature_rows


class RunningMean:
    """Mean of per-batch means, each weighted by how many items it averaged, so the result is the mean over all
    items whatever the batch boundaries (batches differ in real tokens under dynamic padding)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def add(self, batch_mean: torch.Tensor | float, items: int) -> None:
        self.total += float(batch_mean) * items
        self.count += items

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")


def length_order(features: Any) -> list[int]:
    """Row indices by ascending ``length``: eval batches of similar lengths pad, and generate, little."""
    lengths = list(features["length"])
    return sorted(range(len(lengths)), key=lengths.__getitem__)


def eval_batches(
    model: Any,
    features: Any,
    batch_size: int,
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    device: Any,
    batches: list[list[int]] | None = None,
) -> Iterator[tuple[list[dict[str, Any]], dict[str, torch.Tensor], Any]]:
    """Yield ``(rows, batch, outputs)`` for consecutive batches of ``features`` in their stored order (of
    ``batch_size`` rows, or the given consecutive ``batches`` of row indices), in eval mode without gradients; the
    model's previous train/eval mode is restored afterwards. Order is kept so callers can line outputs up with
    their examples."""
    if batches is None:
        batches = [list(range(start, min(start + batch_size, len(features))))
                   for start in range(0, len(features), batch_size)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for indices in batches:
                rows = feature_rows(features, indices)
                batch = {k: v.to(device) for k, v in collate(rows).items()}
                yield rows, batch, model(**batch)
    finally:
        model.train(was_training)
