"""Checkpoints that survive kill -9: written aside, marked complete, renamed into place.

Layout: ``<output>/checkpoints/step-<N>/`` holding ``trainable.safetensors`` (the weights that train: the whole
model under ``full``, only the trained tensors and adapters otherwise), ``optimizer.pt``, ``trainer_state.json``
(step, data position, schedule, early-stopping state, last metrics), ``rng-rank<R>.pt`` (Python, NumPy, torch
and CUDA generators of each rank), ``manifest.json`` (the strategy's trainable set: which tensors train, see
``Strategy.trainable_set``), ``config.json`` (the trainer config) and, written last, ``COMPLETE``. A sharded (FSDP) model's checkpoint holds
each rank's shard of the weights and optimizer state instead of ``trainable.safetensors`` and ``optimizer.pt``
(sharded.py); it is committed, found and pruned the same way.

A save writes everything into ``.tmp-step-<N>``, fsyncs each file, writes ``COMPLETE``, and renames the directory
to ``step-<N>`` (one atomic rename). Discovery only considers ``step-<N>`` directories that hold ``COMPLETE``, so a
save cut short by a crash is never resumed from; such leftovers are removed by the next save. ``save`` is that
sequence for every rank of a run, with the barriers between the ranks' parts.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError

from finetune_trainer import runtime, sharded
from finetune_trainer.errors import ConfigError, Interrupted, StorageError
from finetune_trainer.runtime import Runtime

COMPLETE = "COMPLETE"
WEIGHTS = "trainable.safetensors"
OPTIMIZER = "optimizer.pt"
STATE = "trainer_state.json"
TRAINABLE_SET = "manifest.json"  # the name checkpoints written so far carry, so that they still resume
CONFIG = "config.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_LEFTOVER = re.compile(r"^\.(tmp|old)-step-\d+")


@dataclass
class Checkpoint:
    path: Path
    step: int
    state: dict[str, Any]
    trainable_set: dict[str, Any]

    @property
    def sharded(self) -> bool:
        return sharded.is_sharded(self.path)

    def weights(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.path / WEIGHTS))

    def restore_weights(self, model: torch.nn.Module, trainable_names: list[str], location: str) -> None:
        """Copy the saved weights into a freshly built ``model``, which must train the same tensors. A sharded
        checkpoint's weights come back with its optimizer state, into the sharded model (``restore_optimizer``)."""
        saved, now = set(self.trainable_set["trainable"]), set(trainable_names)
        if saved != now:
            raise ConfigError(
                f"output.location {location} holds checkpoints of a different strategy or model ({len(saved)} "
                f"trainable tensors there, {len(now)} now); use a new output.location or delete {self.path.parent}",
                field="output.location")
        if self.sharded:
            return
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in self.weights().items():
                params[name].copy_(tensor)

    def optimizer_state(self, device: torch.device) -> dict:
        return torch.load(self.path / OPTIMIZER, map_location=device, weights_only=False)

    def restore_optimizer(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                          device: torch.device) -> None:
        """The optimizer's state into ``optimizer`` of the wrapped ``model``; every rank calls it. A sharded
        checkpoint restores the trainable weights too, each rank reading its own shards."""
        if self.sharded:
            sharded.load(self.path, model, optimizer)
        else:
            runtime.load_optimizer_state(model, optimizer, self.optimizer_state(device))

    def restore_rng(self, rank: int) -> None:
        path = self.path / f"rng-rank{rank}.pt"
        if not path.is_file():  # fewer ranks saved than run now: keep this rank's fresh seeds
            return
        state = torch.load(path, weights_only=False)
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if state.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def directory(output: Path) -> Path:
    return output / "checkpoints"


def latest(output: Path) -> Checkpoint | None:
    """The newest complete checkpoint under ``output``, or None."""
    root = directory(output)
    if not root.is_dir():
        return None
    steps = sorted((int(m.group(1)), d) for d in root.iterdir()
                   if (m := _STEP_DIR.match(d.name)) and d.is_dir() and (d / COMPLETE).is_file())
    if not steps:
        return None
    return _open(*steps[-1])


def at_step(output: Path, step: int) -> Checkpoint | None:
    """The complete checkpoint of ``step`` (evaluation.finalModel best), or None."""
    path = directory(output) / f"step-{step}"
    return _open(step, path) if (path / COMPLETE).is_file() else None


def _open(step: int, path: Path) -> Checkpoint:
    return Checkpoint(path, step, json.loads((path / STATE).read_text()),
                      json.loads((path / TRAINABLE_SET).read_text()))


def save(output: Path, step: int, rt: Runtime, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         state: dict, trainable_set: dict, config: dict, keep: int, protect: int | None = None) -> Path | None:
    """Write the checkpoint of ``step``; every rank calls it. The main rank makes the staging directory, each rank
    adds its generators (and, when ``model`` is sharded, its shard of the weights and optimizer state), the main
    rank writes the rest and commits. Returns the committed directory on the main rank, None on the others.
    ``protect``: a step whose checkpoint survives pruning (the best one, for evaluation.finalModel best)."""
    staging = staging_path(output, step)
    if rt.is_main:
        staging_dir(output, step)
    rt.barrier()
    staging.mkdir(parents=True, exist_ok=True)  # a node whose staging copy is its own (s3:// output, multi-node)
    save_rng(staging, rt.rank)
    if runtime.is_fsdp(model):
        sharded.save(staging, model, optimizer)
        weights = optimizer_state = None
    else:
        weights, optimizer_state = runtime.trainable_weights(model), optimizer.state_dict()
    if rt.is_main:
        save_main(staging, weights, optimizer_state, state, trainable_set, config)
    rt.barrier()
    final = commit(output, staging, step, keep, protect) if rt.is_main else None
    rt.barrier()
    return final


def staging_path(output: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` is written before its commit renames it to ``step-<N>``."""
    return directory(output) / f".tmp-step-{step}"


def staging_dir(output: Path, step: int) -> Path:
    """An empty ``.tmp-step-<N>`` directory to write a checkpoint into (made by the main rank)."""
    path = staging_path(output, step)
    try:
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
    except OSError as exc:
        raise StorageError(f"output.location: cannot create {path}: {exc}", field="output.location") from exc
    return path


def save_rng(staging: Path, rank: int) -> None:
    """Each rank writes its own generators into the staging directory."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    _write(staging / f"rng-rank{rank}.pt", lambda f: torch.save(state, f))


def save_main(staging: Path, weights: dict[str, torch.Tensor] | None, optimizer_state: dict | None, state: dict,
              trainable_set: dict, config: dict) -> None:
    """The main rank's part: weights and optimizer (unless every rank saved its shard of them), trainer state,
    trainable set and config."""
    from safetensors.torch import save_file

    if weights is not None:
        tensors = {name: t.detach().to("cpu").contiguous() for name, t in weights.items()}
        # save_file writes from the tensors' own memory, where `save` built the file in memory first, twice: two
        # copies of the weights at once (a BERT-base's `full` checkpoint peaked 420 MiB above its training).
        # It opens the path itself; _write's fsync of the same file still makes the data durable.
        _write(staging / WEIGHTS, lambda f: save_file(tensors, f.name))
        _write(staging / OPTIMIZER, lambda f: torch.save(optimizer_state, f))
    _write(staging / STATE, lambda f: f.write(json.dumps(state, indent=1).encode()))
    _write(staging / TRAINABLE_SET, lambda f: f.write(json.dumps(trainable_set, indent=1).encode()))
    _write(staging / CONFIG, lambda f: f.write(json.dumps(config, indent=1).encode()))


def commit(output: Path, staging: Path, step: int, keep: int, protect: int | None = None) -> Path:
    """Mark the staged checkpoint complete, move it into place atomically, and drop all but the newest ``keep``
    (and ``protect``)."""
    root = directory(output)
    final = root / f"step-{step}"
    try:
        _write(staging / COMPLETE, lambda f: f.write(b"ok\n"))
        _fsync_dir(staging)
        if final.exists():  # re-saving a step (resumed at it): move the old copy aside, then replace it
            aside = root / f".old-step-{step}"
            if aside.exists():
                shutil.rmtree(aside)
            os.rename(final, aside)
        os.rename(staging, final)
        _fsync_dir(root)
        _prune(root, keep, protect)
    except OSError as exc:
        raise StorageError(f"output.location: cannot write checkpoint {final}: {exc}", field="output.location") from exc
    return final


def _prune(root: Path, keep: int, protect: int | None = None) -> None:
    complete = sorted((int(m.group(1)), d) for d in root.iterdir()
                      if (m := _STEP_DIR.match(d.name)) and (d / COMPLETE).is_file())
    doomed = [d for step, d in complete[:-keep] if step != protect]
    doomed += [d for d in root.iterdir() if _LEFTOVER.match(d.name)]
    doomed += [d for d in root.iterdir() if _STEP_DIR.match(d.name) and not (d / COMPLETE).is_file()]
    for d in doomed:
        shutil.rmtree(d, ignore_errors=True)


def _write(path: Path, fill) -> None:
    try:
        with open(path, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
    except (RuntimeError, SafetensorError) as exc:
        # A second SIGTERM raises Interrupted inside torch.save; the zip writer's cleanup then fails ("unexpected
        # pos") and would report a non-retryable error in its place.
        if isinstance(exc.__context__, Interrupted):
            raise exc.__context__ from None
        # torch.save's zip writer turns a failed write into a RuntimeError ("unexpected pos ..."), and safetensors
        # into its own error, hiding ENOSPC; name the real cause so it is reported as the retryable storage error
        # it is.
        if _bytes_free(path.parent) < NEARLY_FULL:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
        raise


NEARLY_FULL = 1 << 20  # a write that failed with less than this left was out of space


def _bytes_free(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
