"""Length-grouped batches: deterministic per (seed, epoch), complete, little padding, split evenly over ranks."""

from __future__ import annotations

import random

from finetune_trainer.batching import LengthGroupedBatches

_RNG = random.Random(0)
LENGTHS = [_RNG.randint(5, 120) for _ in range(1000)]


def test_same_seed_and_epoch_give_the_same_batches_and_epochs_differ():
    a = LengthGroupedBatches(LENGTHS, 8, seed=1)
    b = LengthGroupedBatches(LENGTHS, 8, seed=1)
    assert a.epoch(0) == b.epoch(0)
    assert a.epoch(0) != a.epoch(1)
    assert a.epoch(0) != LengthGroupedBatches(LENGTHS, 8, seed=2).epoch(0)


def test_every_example_once_per_epoch_longest_batch_first():
    batches = LengthGroupedBatches(LENGTHS, 8, seed=1).epoch(3)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    longest = max(LENGTHS)
    assert max(LENGTHS[i] for i in batches[0]) == longest


def test_grouping_cuts_padding():
    def padded(batches):
        return sum(max(LENGTHS[i] for i in b) * len(b) for b in batches)

    grouped = LengthGroupedBatches(LENGTHS, 16, seed=1).epoch(0)
    plain = LengthGroupedBatches(LENGTHS, 16, seed=1, group_by_length=False).epoch(0)
    assert padded(grouped) < 1.1 * sum(LENGTHS) < padded(plain)


def test_ranks_get_equal_disjoint_shares():
    shares = [LengthGroupedBatches(LENGTHS[:99], 10, seed=1, rank=r, world_size=3).epoch(0) for r in range(3)]
    assert [len(s) for s in shares] == [4, 4, 4]  # 10 batches padded to 12 by repeating the first ones
    seen = [i for s in shares for b in s for i in b]
    assert set(seen) == set(range(99))


def test_resuming_mid_epoch_continues_the_same_order():
    sampler = LengthGroupedBatches(LENGTHS, 8, seed=5)
    full = sampler.epoch(2)
    assert LengthGroupedBatches(LENGTHS, 8, seed=5).epoch(2)[40:] == full[40:]
