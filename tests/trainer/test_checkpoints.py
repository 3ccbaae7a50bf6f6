"""Checkpoint files: atomic commit, discovery that never picks a half-written checkpoint, pruning to keep K."""

from __future__ import annotations

import json

import pytest
import torch
from finetune_trainer import checkpoints
from finetune_trainer.errors import Interrupted


def write_checkpoint(output, step, keep=2, weights=None):
    staging = checkpoints.staging_dir(output, step)
    checkpoints.save_rng(staging, rank=0)
    checkpoints.save_main(staging, weights or {"w": torch.full((2,), float(step))}, {"state": {}},
                          {"train": {"step": step}}, {"trainable": {"w": 2}}, {"name": "x"})
    return checkpoints.commit(output, staging, step, keep)


def test_commit_renames_a_complete_directory_into_place(tmp_path):
    final = write_checkpoint(tmp_path, 5)

    assert final == tmp_path / "checkpoints" / "step-5"
    assert sorted(p.name for p in final.iterdir()) == sorted(
        ["COMPLETE", "trainable.safetensors", "optimizer.pt", "trainer_state.json", "manifest.json", "config.json",
         "rng-rank0.pt"])
    assert not any(p.name.startswith(".tmp") for p in final.parent.iterdir())
    found = checkpoints.latest(tmp_path)
    assert found.step == 5 and found.state == {"train": {"step": 5}}
    assert torch.equal(found.weights()["w"], torch.full((2,), 5.0))


def test_half_written_checkpoints_are_never_picked(tmp_path):
    write_checkpoint(tmp_path, 4)
    root = tmp_path / "checkpoints"
    (root / ".tmp-step-9").mkdir()  # a save cut short before its rename
    (root / ".tmp-step-9" / "COMPLETE").write_text("ok")  # even one that got as far as its marker
    (root / "step-8").mkdir()  # a directory without the marker
    (root / "step-8" / "trainer_state.json").write_text(json.dumps({"train": {"step": 8}}))
    (root / "step-x").mkdir()

    assert checkpoints.latest(tmp_path).step == 4


def test_no_checkpoint_directory_means_a_fresh_start(tmp_path):
    assert checkpoints.latest(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    assert checkpoints.latest(tmp_path) is None


def test_keeps_the_newest_k_and_clears_leftovers(tmp_path):
    root = tmp_path / "checkpoints"
    write_checkpoint(tmp_path, 1)
    (root / ".tmp-step-2").mkdir()
    (root / "step-3").mkdir()  # incomplete
    for step in (4, 6, 8):
        write_checkpoint(tmp_path, step, keep=2)

    assert sorted(p.name for p in root.iterdir()) == ["step-6", "step-8"]


def test_saving_the_same_step_again_replaces_it(tmp_path):
    write_checkpoint(tmp_path, 3)
    write_checkpoint(tmp_path, 3, weights={"w": torch.zeros(2)})

    assert torch.equal(checkpoints.latest(tmp_path).weights()["w"], torch.zeros(2))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-3"]


def test_rng_state_round_trips(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    write_checkpoint(tmp_path, 1)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.rand(5), random.random(), np.random.rand()

    checkpoints.latest(tmp_path).restore_rng(rank=0)
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


def test_a_second_sigterm_inside_torch_save_stays_an_interruption(tmp_path):
    """stopping.py raises Interrupted from the signal handler, which can land inside torch.save; the zip writer's
    cleanup then fails with a RuntimeError of its own (CI, 2026-12-06), which must not replace the retryable
    interruption."""
    def interrupted_mid_write(f):
        try:
            f.write(b"partial")
            raise Interrupted("SIGTERM again: stopped without saving a checkpoint")
        except Interrupted:
            raise RuntimeError("[enforce fail at inline_container.cc:671] . unexpected pos 64 vs 0")

    with pytest.raises(Interrupted, match="SIGTERM again"):
        checkpoints._write(tmp_path / "rng-rank0.pt", interrupted_mid_write)
