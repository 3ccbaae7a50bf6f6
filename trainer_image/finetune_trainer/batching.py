"""Batches: length-grouped, deterministic from (seed, epoch), resumable mid-epoch, padded per batch.

Grouping examples of similar length (as Hugging Face's LengthGroupedSampler does) means each batch pads only to
its own longest row: on GLUE-style pairs that is roughly 50 tokens instead of a fixed 128. The order is a pure
function of (seed, epoch), so a resumed run rebuilds the same epoch and skips the batches it already consumed.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

MEGABATCH_FACTOR = 50  # batches per sorting window: long enough to group lengths, short enough to stay random


class LengthGroupedBatches:
    """The batches (lists of example indices) each epoch runs, for one rank of ``world_size``."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, *, group_by_length: bool = True,
                 rank: int = 0, world_size: int = 1):
        if len(lengths) == 0:
            raise ValueError("no examples to batch")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        batches = -(-len(self.lengths) // self.batch_size)
        return -(-batches // self.world_size)

    def epoch(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        if self.group_by_length:
            window = self.batch_size * MEGABATCH_FACTOR * self.world_size
            order = [i for start in range(0, len(order), window)
                     for i in sorted(order[start:start + window], key=lambda i: -self.lengths[i])]
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.group_by_length:
            # Shuffle the batch order too (sorting made it long-to-short), but run the longest batch first so an
            # out-of-memory shows up at step 1, not hours in.
            longest = max(range(len(batches)), key=lambda b: max(self.lengths[i] for i in batches[b]))
            rest = [batches[b] for b in torch.randperm(len(batches), generator=g).tolist() if b != longest]
            batches = [batches[longest]] + rest
        per_rank = len(self)
        padded = (batches * (1 + per_rank * self.world_size // len(batches)))[:per_rank * self.world_size]
        return padded[self.rank::self.world_size]


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
