"""Batches: length-grouped, deterministic from (seed, epoch), resumable mid-epoch, padded per batch, optionally
bounded by tokens.

Grouping examples of similar length (as Hugging Face's LengthGroupedSampler does) means each batch pads only to
its own longest row: on GLUE-style pairs that is roughly 50 tokens instead of a fixed 128. The order is a pure
function of (seed, epoch), so a resumed run rebuilds the same epoch and skips the batches it already consumed.

A ``TokenBudget`` (``training.batchTokens``) bounds a batch by the cells of the tensors it collates into (rows x
width, padding included: what activation memory scales with) instead of by examples alone: each length-sorted
window is cut into the longest runs of examples whose layout fits, so a window of long texts makes more, smaller
batches. The number of batches then differs from epoch to epoch; it is still a pure function of (seed, epoch).
The loss of such uneven batches is weighed per loss unit (``loss_weights``), not per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from finetune_trainer.errors import ConfigError

MEGABATCH_FACTOR = 50  # batches per sorting window: long enough to group lengths, short enough to stay random


@dataclass(frozen=True)
class TokenBudget:
    """At most ``tokens`` tensor cells per batch; ``cells(lengths)``: the cells a batch of examples of these lengths
    collates into (the task's layout: padded rows, or packed rows), never fewer than ``sum(lengths)``."""

    tokens: int
    cells: Callable[[list[int]], int]


class LengthGroupedBatches:
    """The batches (lists of example indices) each epoch runs, for one rank of ``world_size``."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, *, group_by_length: bool = True,
                 rank: int = 0, world_size: int = 1, budget: TokenBudget | None = None):
        if len(lengths) == 0:
            raise ValueError("no examples to batch")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.rank = rank
        self.world_size = world_size
        self.budget = budget

    def count(self, epoch: int) -> int:
        """Batches of ``epoch`` on each rank (the same for every epoch unless a token budget forms them)."""
        if self.budget is not None:
            return len(self.epoch(epoch))
        batches = -(-len(self.lengths) // self.batch_size)
        return -(-batches // self.world_size)

    def epoch(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        windows = [order]
        if self.group_by_length:
            size = self.batch_size * MEGABATCH_FACTOR * self.world_size
            windows = [sorted(order[start:start + size], key=lambda i: -self.lengths[i])
                       for start in range(0, len(order), size)]
        if self.budget is None:
            order = [i for window in windows for i in window]
            batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        else:  # cut within windows, where lengths descend
            batches = [batch for window in windows
                       for batch in within_budget(window, self.lengths, self.batch_size, self.budget)]
        if self.group_by_length:
            # Shuffle the batch order too (sorting made it long-to-short), but run the largest batch first so an
            # out-of-memory shows up at step 1, not hours in.
            largest = max(range(len(batches)), key=lambda b: self._size(batches[b]))
            rest = [batches[b] for b in torch.randperm(len(batches), generator=g).tolist() if b != largest]
            batches = [batches[largest]] + rest
        per_rank = -(-len(batches) // self.world_size)
        padded = (batches * (1 + per_rank * self.world_size // len(batches)))[:per_rank * self.world_size]
        return padded[self.rank::self.world_size]

    def _size(self, batch: list[int]) -> int:
        lengths = [self.lengths[i] for i in batch]
        return max(lengths) if self.budget is None else self.budget.cells(lengths)


def within_budget(order: list[int], lengths: Sequence[int], batch_size: int, budget: TokenBudget) -> list[list[int]]:
    """``order`` cut into consecutive batches of at most ``batch_size`` examples and ``budget.tokens`` cells, each
    as long as fits: a binary search over its length that takes only lengths measured to fit (exact when lengths
    descend, as within a sorted window, since the cells of a growing prefix then never shrink)."""
    batches, start = [], 0
    while start < len(order):
        first = lengths[order[start]]
        if budget.cells([first]) > budget.tokens:
            raise ConfigError(f"training.batchTokens {budget.tokens} is smaller than an example of {first} tokens; "
                              "raise it to at least dataset.maxLength", field="training.batchTokens")
        fits, most, tokens = 1, min(batch_size, len(order) - start), 0
        for n, i in enumerate(order[start:start + most]):  # cells are never fewer than the tokens themselves
            tokens += lengths[i]
            if tokens > budget.tokens:
                most = n
                break
        while fits < most:
            k = (fits + most + 1) // 2
            if budget.cells([lengths[i] for i in order[start:start + k]]) <= budget.tokens:
                fits = k
            else:
                most = k - 1
        batches.append(order[start:start + fits])
        start += fits
    return batches


def pack(sizes: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: the positions of ``sizes`` in rows of at most ``capacity``, longest first, each into
    the first row with room for it."""
    rows: list[list[int]] = []
    room: list[int] = []
    for k in sorted(range(len(sizes)), key=lambda k: sizes[k], reverse=True):
        fit = next((r for r, free in enumerate(room) if sizes[k] <= free), None)
        if fit is None:
            rows.append([k])
            room.append(capacity - sizes[k])
        else:
            rows[fit].append(k)
            room[fit] -= sizes[k]
    return rows


def loss_weights(units: list[int | None], total_over_ranks: Callable[[float], float], world_size: int) -> list[float]:
    """What each micro-batch's mean loss is multiplied by before backward. With loss units (a task's labelled
    tokens), every unit of the step weighs the same, on every rank: a micro-batch's share is its units over the
    step's units on all ranks, times ``world_size`` because data parallelism averages the ranks' gradients. A task
    without units (``None``) weighs its micro-batches equally, as their mean."""
    if any(u is None for u in units):
        return [1 / len(units)] * len(units)
    total = total_over_ranks(float(sum(units)))
    return [u * world_size / total for u in units]


def rows(dataset: Any, indices: list[int] | slice) -> list[dict[str, Any]]:
    """Rows of a ``datasets.Dataset`` as dicts (what a task's ``collate`` takes), fetched in one columnar read."""
    columns = dataset[indices]
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


def loader(dataset: Any, batches: list[list[int]], collate: Callable[[list[dict]], dict], *,
           workers: int = 0, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """Collated batches in the given order; workers prefetch them on GPU machines."""

    def make(indices: list[int]) -> dict:
        return collate(rows(dataset, indices))

    # Its own generator: creating a loader must not draw from the global RNG, or a run resumed mid-epoch would
    # see different dropout masks than the run it continues.
    return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, collate_fn=make,
                                       num_workers=workers, pin_memory=pin_memory, generator=torch.Generator())
