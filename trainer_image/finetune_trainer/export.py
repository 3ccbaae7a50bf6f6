"""The run's result: the fine-tuned model in ``<output>/model``, in the form transformers or PEFT loads directly.

What is saved follows from what trained: under lora without embeddings the adapter carries every trained weight,
so the adapter is saved (and the merged model under ``merged/`` with ``output.mergeAdapter``); when base weights
trained too (full, partial, hybrid, lora with embeddings) the adapter alone would be incomplete, so the model is
saved merged. It is written aside and renamed into place, so a crash never leaves half a model under ``model``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from finetune_trainer import runtime
from finetune_trainer.strategies import Strategy

log = logging.getLogger("finetune_trainer")


def save_model(strategy: Strategy, tokenizer: Any, output: Path, rt: runtime.Runtime, merge_adapter: bool) -> Path:
    """Write ``<output>/model``; every rank calls it (under FSDP the weights are gathered from all of them)."""
    target = output / "model"
    staging = output / ".tmp-model"
    state_dict = runtime.full_state_dict(strategy.model) if runtime.is_fsdp(strategy.model) else None
    if rt.is_main:
        if staging.exists():
            shutil.rmtree(staging)
        model = strategy.model
        if strategy.uses_adapters and strategy.adapter_is_complete:
            model.save_pretrained(staging, state_dict=state_dict)
            if merge_adapter:
                model.merge_and_unload().save_pretrained(staging / "merged")
                tokenizer.save_pretrained(staging / "merged")
        else:
            if strategy.uses_adapters:
                model = model.merge_and_unload()
            # Packed training runs without the KV cache; the saved model should generate with it.
            if getattr(model.config, "use_cache", None) is False:
                model.config.use_cache = True
            model.save_pretrained(staging, state_dict=state_dict)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        log.info("model saved to %s", target)
    rt.barrier()
    return target
