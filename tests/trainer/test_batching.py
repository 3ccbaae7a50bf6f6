"""Length-grouped batches: deterministic per (seed, epoch), complete, little padding, split evenly over ranks."""

from __future__ import annotations

import random

import pytest
from finetune_trainer.batching import LengthGroupedBatches, TokenBudget, pack, within_budget
from finetune_trainer.errors import ConfigError

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


def packed_cells(lengths: list[int], capacity: int = 120) -> int:
    """Rows x width of ``lengths`` packed into rows of ``capacity`` (what causal-LM packing collates)."""
    rows = pack(lengths, capacity)
    return len(rows) * max(sum(lengths[k] for k in row) for row in rows)


def padded_cells(lengths: list[int]) -> int:
    return len(lengths) * max(lengths)


@pytest.mark.parametrize("cells", [packed_cells, padded_cells])
def test_a_token_budget_bounds_every_batch_and_still_covers_every_example(cells):
    budget = TokenBudget(480, cells)
    sampler = LengthGroupedBatches(LENGTHS, 32, seed=1, budget=budget)
    for epoch in range(3):
        batches = sampler.epoch(epoch)
        assert max(cells([LENGTHS[i] for i in b]) for b in batches) <= 480
        assert max(len(b) for b in batches) <= 32
        assert sorted(i for b in batches for i in b) == list(range(1000))
        assert sampler.count(epoch) == len(batches)
        assert max(cells([LENGTHS[i] for i in b]) for b in batches) == cells([LENGTHS[i] for i in batches[0]])
    assert sampler.epoch(1) == LengthGroupedBatches(LENGTHS, 32, seed=1, budget=budget).epoch(1)  # resumable
    # Short examples fill a batch up to batchSize, long ones make small batches: sizes follow the lengths.
    short = [b for b in sampler.epoch(0) if max(LENGTHS[i] for i in b) <= 20]
    long = [b for b in sampler.epoch(0) if min(LENGTHS[i] for i in b) >= 100]
    assert max(len(b) for b in long) < min(len(b) for b in short)


def test_a_token_budget_splits_evenly_over_ranks():
    budget = TokenBudget(480, padded_cells)
    shares = [LengthGroupedBatches(LENGTHS, 32, seed=1, rank=r, world_size=3, budget=budget).epoch(0)
              for r in range(3)]
    assert len({len(s) for s in shares}) == 1
    assert set(i for s in shares for b in s for i in b) == set(range(1000))


def test_an_example_larger_than_the_budget_is_refused_naming_the_field():
    with pytest.raises(ConfigError) as info:
        within_budget([0, 1], [200, 10], 8, TokenBudget(128, padded_cells))
    assert info.value.field == "training.batchTokens" and "an example of 200 tokens" in str(info.value)


def test_pack_is_first_fit_decreasing():
    assert pack([5, 3, 4, 4], 8) == [[0, 1], [2, 3]]
    assert pack([9, 2, 2], 8) == [[0], [1, 2]]  # an example longer than a row gets a row of its own
