"""QLoRA: ``strategy.lora.quantization``, the frozen base model held in 4-bit weights (bitsandbytes).

Why a module of its own: 4-bit weights change how the model is loaded (a ``BitsAndBytesConfig``, each rank's copy
placed on its GPU at load time), what happens before the adapters go on (``peft.prepare_model_for_kbit_training``:
the base frozen, its remaining 16-bit tensors in fp32), and what must be refused before training: a machine without
a GPU (bitsandbytes' 4-bit kernels run on CUDA), ``output.mergeAdapter`` (merging into 4-bit weights would round
the trained update away), and a trainer without bitsandbytes. bitsandbytes is imported only on the GPU path, so
the CPU install does not need it (the ``qlora`` extra and the trainer image install it).

The GPU path has not run in this project's tests, which run on CPUs: they check the refusals and the settings
handed to transformers, not 4-bit training itself (BENCHMARKS.md's GPU script runs QLoRA where a GPU is at hand).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import nn

from finetune_trainer.config import Quantization, StrategySpec, TrainerConfig
from finetune_trainer.errors import ConfigError

FIELD = "strategy.lora.quantization"
BITS = 4


def requested(spec: StrategySpec) -> Quantization | None:
    return Quantization(spec.lora.quantization) if spec.lora and spec.lora.quantization else None


def preflight(config: TrainerConfig, device: torch.device) -> None:
    """Refuse what cannot train in 4 bits here, naming the field, before anything is loaded."""
    kind = requested(config.strategy)
    if kind is None:
        return
    if device.type != "cuda":
        raise ConfigError(f"{FIELD} {kind.value} needs a GPU (bitsandbytes' 4-bit kernels run on CUDA) and this "
                          "trainer has none: set resources.gpus to at least 1, or remove strategy.lora.quantization "
                          "to train LoRA on full-precision weights", field=FIELD)
    if config.output.merge_adapter:
        raise ConfigError(f"output.mergeAdapter is not supported with {FIELD}: merging the adapter into 4-bit weights "
                          "rounds the trained update away; save the adapter (the default) and merge it into the "
                          "full-precision base model after training", field="output.mergeAdapter")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"{FIELD} needs the bitsandbytes package, which this trainer lacks: use the trainer image, "
                          "or pip install 'finetune-operator[qlora]'", field=FIELD)


def load_kwargs(spec: StrategySpec, device: torch.device) -> dict[str, Any]:
    """What ``from_pretrained`` needs to load the base in 4 bits on ``device`` (nothing without quantization).
    Double quantization (the quantization constants quantized too) as QLoRA does; compute in bf16 where the GPU
    has it, else fp16."""
    kind = requested(spec)
    if kind is None:
        return {}
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=kind.value, bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=compute)
    return {"quantization_config": config, "device_map": {"": device.index or 0}}


def prepare(model: nn.Module) -> nn.Module:
    """A model loaded in 4 bits made ready for adapters: frozen, its 16-bit tensors (norms, embeddings, head) in
    fp32 for stable training. Gradient checkpointing stays training.gradientCheckpointing's choice (train.py)."""
    if not getattr(model, "is_loaded_in_4bit", False):
        return model
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def weight_bytes(model: nn.Module, spec: StrategySpec) -> int:
    """Bytes of ``model``'s weights once loaded as ``spec`` says (for `finetune plan`, which loads them in fp32):
    the frozen linear weights at 4 bits when quantized (transformers keeps the output projection, ``lm_head``, in
    full precision), every other tensor as it is."""
    params = list(model.parameters())
    full = sum(p.numel() * p.element_size() for p in params)
    if requested(spec) is None:
        return full
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    kept = {id(p) for p in output.parameters()} if output is not None else set()
    quantized = [m.weight for m in model.modules() if isinstance(m, nn.Linear)
                 and not m.weight.requires_grad and id(m.weight) not in kept]
    return full - sum(p.numel() * (p.element_size() - BITS / 8) for p in quantized)
