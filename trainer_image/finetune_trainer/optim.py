"""Optimizer and learning-rate schedule over the trainable parameters only.

Parameter groups: weight decay applies to matrices, not to biases and norm scales (every tensor with fewer than
two dimensions). With layer-wise learning-rate decay, block ``i`` of ``n`` gets ``lr * decay**(n - i)`` (the head
gets ``lr``, the embeddings ``lr * decay**(n + 1)``), so lower blocks move less.

The schedule is a pure function of the step: each group's ``lr`` is set to ``base_lr * factor(step)`` before the
step runs, so resuming needs only the step number, and rebuilding the optimizer (staged unfreezing) keeps the
schedule. Warmup is linear from ``1/warmup`` (no step runs at zero), then linear to zero, cosine to zero, or
constant.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn

from finetune_trainer.config import Optimizer, Schedule, TrainingSpec
from finetune_trainer.layers import Layout


def parameter_groups(model: nn.Module, layout: Layout, training: TrainingSpec) -> list[dict]:
    """Trainable parameters grouped by (weight decay, learning rate), in a stable order."""
    depth = _depth_of(layout)
    n = len(layout.blocks)
    groups: dict[tuple[float, float], list[nn.Parameter]] = defaultdict(list)
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = training.weight_decay if p.ndim >= 2 else 0.0
        lr = training.learning_rate
        if training.layerwise_lr_decay is not None:
            lr *= training.layerwise_lr_decay ** (n - depth.get(id(p), n))
        groups[(decay, lr)].append(p)
    return [{"params": ps, "weight_decay": decay, "lr": lr, "base_lr": lr} for (decay, lr), ps in groups.items()]


def build_optimizer(groups: list[dict], training: TrainingSpec) -> torch.optim.Optimizer:
    kind = Optimizer(training.optimizer)
    lr = training.learning_rate
    if kind == Optimizer.ADAMW:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    if kind == Optimizer.ADAM:
        return torch.optim.Adam(groups, lr=lr, fused=True)
    if kind == Optimizer.SGD:
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    if kind == Optimizer.RMSPROP:
        return torch.optim.RMSprop(groups, lr=lr)
    from transformers.optimization import Adafactor

    # With an explicit learning rate (no relative steps), as the schedule drives it like the others'.
    return Adafactor(groups, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)


def rebuild_optimizer(old: torch.optim.Optimizer, groups: list[dict], training: TrainingSpec) -> torch.optim.Optimizer:
    """A new optimizer over a grown trainable set that keeps the state of the parameters it already had."""
    new = build_optimizer(groups, training)
    for p, state in old.state.items():
        new.state[p] = state
    return new


def apply_gradients(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, model: nn.Module,
                    max_grad_norm: float | None) -> None:
    """The optimizer step after backward: unscale (fp16), clip the trainable parameters' norm, step, clear."""
    if scaler:
        scaler.unscale_(optimizer)
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: Schedule) -> float:
    """The multiplier of the base learning rate for optimizer step ``step`` (counted from 0)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    kind = Schedule(schedule)
    if kind == Schedule.CONSTANT:
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if kind == Schedule.COSINE:
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return max(0.0, 1.0 - progress)


def set_learning_rate(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Apply ``factor`` to every group; returns the top group's learning rate (what the metrics show)."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return max(group["lr"] for group in optimizer.param_groups)


def total_steps(batches_in_epoch: Callable[[int], int], training: TrainingSpec) -> int:
    """Optimizer steps of the run: ``epochs`` (possibly fractional) of accumulation windows, at most ``maxSteps``.
    ``batches_in_epoch(e)``: the micro-batches of epoch ``e``, which a token budget makes differ by epoch."""
    total = 0
    for epoch in range(math.ceil(training.epochs)):
        windows = math.ceil(batches_in_epoch(epoch) / training.gradient_accumulation)
        # A last, partial epoch adds the fraction of its windows the epochs ask for (with equal epochs the total
        # is ceil(epochs x windows), as epoch x windows is a whole number).
        total += windows if epoch + 1 <= training.epochs else math.ceil(training.epochs * windows - epoch * windows)
        if training.max_steps is not None and total >= training.max_steps:
            return training.max_steps
    return total


def warmup_steps(total_steps: int, ratio: float) -> int:
    return math.ceil(total_steps * ratio)


def _depth_of(layout: Layout) -> dict[int, int]:
    """Parameter id → depth: its block's index, -1 for the embeddings; absent for the head (the top)."""
    depth = {id(layout.params[name]): -1 for name in layout.embeddings}
    for block in layout.blocks:
        for p in block.module.parameters():  # includes LoRA adapters PEFT placed inside the block
            depth[id(p)] = block.index
    return depth
