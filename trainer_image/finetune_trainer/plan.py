"""``plan(config)``: resolve a job without training and without reading its data.

Loads the model (the task's model class), resolves its block stacks and the strategy exactly as training does,
and reports which blocks and modules train, the LoRA targets, trainable/total parameter counts (the same set
that then changes in training), what bounds a micro-batch (batchSize or batchTokens) and an estimate of training
memory. Impossible specs raise the same errors the
trainer's pre-flight raises (LayerSelectionError, ModelLoadError, ConfigError).

The task head is sized from the model's config (two labels unless it says otherwise); training sizes it from
the labels in the data, so a K-label dataset adds (K - 2) x (hidden + 1) trainable parameters to the count.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from finetune_trainer import cache, defaults, models, quantization
from finetune_trainer.config import Optimizer, StrategyType, TrainerConfig
from finetune_trainer.errors import ModelLoadError
from finetune_trainer.layers import PARTS, resolve_layout
from finetune_trainer.objectstore import store_for
from finetune_trainer.strategies import Strategy, build_strategy
from finetune_trainer.tasks.base import get_task

# Bytes of activations kept for backward per token, per block in the autograd graph, per hidden unit (fp32
# elements): projections, attention, MLP, norms and dropout masks of a standard block (Korthikanti et al. 2022,
# 34 bytes at 16-bit ≈ 17 elements).
ACTIVATION_ELEMENTS_PER_HIDDEN = 17
LM_TASKS = ("causal-lm", "seq2seq")


def plan(config: TrainerConfig) -> dict[str, Any]:
    task = get_task(config.task)
    # An s3:// model is fetched through the cache, as training would fetch it (the data is not read).
    spec = cache.local_source(store_for(config), config.model, "model.source", ModelLoadError)
    model = models.load_model(spec, task.auto_model)
    layout = resolve_layout(model)
    strategy = build_strategy(model, layout, config.strategy)
    trainable_set = strategy.trainable_set()
    all_blocks = [b.index for b in layout.blocks]
    return {
        "model": {"source": config.model.source, "class": type(model).__name__,
                  "modelType": getattr(model.config, "model_type", None), "dtype": "float32",
                  "precision": config.training.precision,
                  **({"quantization": f"{quantization.BITS}-bit {kind.value} (bitsandbytes, on the GPUs)"}
                     if (kind := quantization.requested(config.strategy)) else {})},
        "task": config.task,
        "strategy": StrategyType(config.strategy.type).value,
        "stacks": [{"name": s.name, "blockClass": s.block_class, "blocks": s.size} for s in layout.stacks],
        "blocks": {"total": len(all_blocks), "trainFully": strategy.full_blocks, "lora": strategy.adapted_blocks,
                   "frozen": sorted(set(all_blocks) - set(strategy.full_blocks) - set(strategy.adapted_blocks))},
        "stages": [{"epoch": epoch, "blocks": blocks} for epoch, blocks in strategy.stages],
        "modules": {"parts": strategy.parts or list(PARTS),
                    "embeddings": _any_trains(strategy, layout.embeddings),
                    "head": bool(layout.head) and (config.strategy.head or strategy.kind == StrategyType.FULL),
                    "headParameters": layout.head, "unusedParameters": layout.unused},
        "loraTargets": {"count": len(strategy.lora_modules),
                        "names": sorted({m.rsplit(".", 1)[-1] for m in strategy.lora_modules})},
        "parameters": {"trainable": trainable_set["trainableParameters"], "total": trainable_set["totalParameters"],
                       "trainablePercent": round(100.0 * trainable_set["trainableParameters"]
                                                 / max(1, trainable_set["totalParameters"]), 3)},
        "trainable": trainable_set["trainable"],
        "batch": batch_bound(config),
        "memory": memory_estimate(config, strategy),
        "training": training_plan(config),
    }


def batch_bound(config: TrainerConfig) -> dict[str, Any]:
    """What bounds a micro-batch on each device: ``tokens`` at most (batchSize x maxLength, or batchTokens when
    that is smaller), and which field decides it; a step adds gradientAccumulation of them."""
    training = config.training
    by_examples = training.batch_size * config.dataset.max_length
    tokens = min(by_examples, training.batch_tokens or by_examples)
    return {"examples": training.batch_size, "tokens": tokens,
            "boundBy": "batchTokens" if tokens < by_examples else "batchSize",
            "gradientAccumulation": training.gradient_accumulation,
            "tokensPerStep": tokens * training.gradient_accumulation}


def training_plan(config: TrainerConfig) -> dict[str, Any]:
    """Where the learning rate came from: a default that depends on the strategy and the batch is a number a user
    needs to see before a run."""
    training = config.training
    default = defaults.default_learning_rate(StrategyType(config.strategy.type).value, training.batch_size,
                                             training.gradient_accumulation)
    return {"epochs": training.epochs, "learningRate": training.learning_rate,
            "learningRateFrom": "default" if training.learning_rate == default else "spec"}


def memory_estimate(config: TrainerConfig, strategy: Strategy) -> dict[str, int]:
    """Rough bytes of training state: fp32 weights (the frozen linear ones in 4 bits under QLoRA), gradients and
    optimizer state of the trainable part, and activations for one batch from the lowest trainable block up (the
    frozen prefix keeps none)."""
    model, training = strategy.model, config.training
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    weights = int(quantization.weight_bytes(model, config.strategy))
    gradients = sum(p.numel() * 4 for p in trainable)
    optimizer = sum(_optimizer_bytes(p, Optimizer(training.optimizer)) for p in trainable)

    hidden = strategy.base.get_input_embeddings().embedding_dim
    lowest = strategy.lowest_trainable_block()
    in_graph = 0 if lowest is None else len(strategy.layout.blocks) - lowest
    tokens = batch_bound(config)["tokens"]
    bytes_per_element = 2 if training.precision in ("bf16", "fp16") else 4
    per_block = ACTIVATION_ELEMENTS_PER_HIDDEN * hidden * bytes_per_element
    if training.gradient_checkpointing:  # only block inputs stay, plus one block recomputed at a time
        activations = tokens * (hidden * bytes_per_element * in_graph + per_block * min(1, in_graph))
    else:
        activations = tokens * per_block * in_graph
    if config.task in LM_TASKS:  # logits and their gradient over the vocabulary
        activations += 2 * tokens * strategy.base.get_input_embeddings().num_embeddings * 4
    total = weights + gradients + optimizer + activations
    return {"totalBytes": total, "weightsBytes": weights, "gradientBytes": gradients, "optimizerBytes": optimizer,
            "activationBytes": activations}


def _optimizer_bytes(p: nn.Parameter, kind: Optimizer) -> int:
    if kind in (Optimizer.ADAMW, Optimizer.ADAM):
        return 8 * p.numel()
    if kind in (Optimizer.SGD, Optimizer.RMSPROP):
        return 4 * p.numel()
    # Adafactor keeps row and column statistics for matrices, a full second moment for vectors.
    return 4 * (sum(p.shape[-2:]) if p.ndim >= 2 else p.numel())


def _any_trains(strategy: Strategy, names: list[str]) -> bool:
    return any(strategy.layout.params[n].requires_grad for n in names)
