"""Checkpoints of a sharded (FSDP) model: each rank writes and reads its own shard, nothing is gathered on one rank.

Why: gathering the weights and optimizer state of a model that needs FSDP onto rank 0 needs rank 0 to hold all of
it, which is exactly what a model larger than one GPU cannot do. ``torch.distributed.checkpoint`` (DCP) instead
writes each rank's shard of the trainable weights and of their optimizer state (``__<rank>_0.distcp``) plus an
index of the shards (``.metadata``, written by rank 0), and on load each rank reads back just the pieces its own
shards need, so the resuming run may even have a different number of ranks.

These files take the place of ``trainable.safetensors`` and ``optimizer.pt`` inside ``step-<N>/``; everything else
in a checkpoint (trainer state with the schedule's position, trainable set, config, each rank's generators) and its
atomic commit, discovery, pruning and ``s3://`` upload are checkpoints.py's and mirror.py's, unchanged. The files
lie flat in the step directory, so mirror.py's restore (which flattens keys) brings back a loadable checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

INDEX = ".metadata"  # DCP's index of the shards: its presence is what makes a checkpoint sharded


def is_sharded(path: Path) -> bool:
    return (path / INDEX).is_file()


def _training_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The trainable tensors (frozen ones come back from model.source) and the optimizer's state, as this rank's
    shards (DTensors). A fresh optimizer gets zero state first (DCP steps it with lr 0), so there is a tensor of
    each shard's shape to load into."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    weights, optimizer_state = get_state_dict(model, optimizer)
    return {"model": {name: t for name, t in weights.items() if name in trainable}, "optimizer": optimizer_state}


def save(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank writes its shard into the staging directory ``path`` (a collective: all ranks call it)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_training_state(model, optimizer), checkpoint_id=str(path))


def load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Restore the trainable weights and the optimizer state of the sharded checkpoint ``path`` into ``model``
    (already sharded) and ``optimizer``; every rank calls it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    state = _training_state(model, optimizer)
    dcp.load(state, checkpoint_id=str(path))
    # strict=False: the frozen tensors are not in the checkpoint, they stay as model.source loaded them.
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(strict=False))
