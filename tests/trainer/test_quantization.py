"""QLoRA (strategy.lora.quantization): refused before anything loads where it cannot run (no GPU here, merged
output, hybrid), the 4-bit settings handed to transformers, and `finetune plan`'s 4-bit weight estimate.

These machines have no GPU, so 4-bit training itself does not run here; its path (quantization.py) is checked up
to what transformers receives, and BENCHMARKS.md's GPU script runs it where a GPU is at hand."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from finetune_trainer import quantization
from finetune_trainer.config import StrategySpec
from finetune_trainer.errors import ConfigError
from finetune_trainer.plan import plan
from finetune_trainer.train import run
from pydantic import ValidationError

QLORA = {"type": "lora", "lora": {"quantization": "nf4"}}
GPU = torch.device("cuda", 1)  # a device value only: nothing is placed on it


def test_training_on_cpu_is_refused_before_loading_naming_the_field(tiny_model_dir, job, tmp_path):
    config = job(tiny_model_dir("llama"), QLORA)

    with pytest.raises(ConfigError) as info:
        run(config)

    assert info.value.field == "strategy.lora.quantization" and info.value.exit_code == 2
    assert "needs a GPU" in str(info.value) and "resources.gpus" in str(info.value)
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_merged_output_is_refused_with_4_bit_weights(tiny_model_dir, job):
    config = job(tiny_model_dir("llama"), QLORA)
    config.output.merge_adapter = True

    with pytest.raises(ConfigError) as info:
        quantization.preflight(config, GPU)

    assert info.value.field == "output.mergeAdapter"


def test_a_trainer_without_bitsandbytes_says_what_to_install(tiny_model_dir, job):
    config = job(tiny_model_dir("llama"), QLORA)
    if importlib.util.find_spec("bitsandbytes") is not None:
        quantization.preflight(config, GPU)  # installed: nothing to refuse on a GPU
        return
    with pytest.raises(ConfigError) as info:
        quantization.preflight(config, GPU)
    assert info.value.field == "strategy.lora.quantization" and "bitsandbytes" in str(info.value)


@pytest.mark.parametrize("spec, words", [
    ({"type": "hybrid", "layers": "last:1", "lora": {"quantization": "nf4"}},
     "strategy.lora.quantization (4-bit base weights, QLoRA) is allowed only when strategy.type is lora"),
    ({"type": "lora", "embeddings": True, "lora": {"quantization": "nf4"}},
     "strategy.embeddings is not allowed with strategy.lora.quantization"),
])
def test_what_would_need_4_bit_weights_to_train_or_merge_is_refused(spec, words):
    with pytest.raises(ValidationError) as info:
        StrategySpec.model_validate(spec)
    assert words in str(info.value)


@pytest.mark.parametrize("kind", ["nf4", "fp4"])
def test_the_base_loads_in_4_bits_with_double_quantization_on_its_rank_gpu(kind):
    spec = StrategySpec.model_validate({"type": "lora", "lora": {"quantization": kind}})
    loaded = quantization.load_kwargs(spec, GPU)

    bnb = loaded["quantization_config"]
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == kind and bnb.bnb_4bit_use_double_quant
    assert bnb.bnb_4bit_compute_dtype in (torch.bfloat16, torch.float16)
    assert loaded["device_map"] == {"": 1}
    assert quantization.load_kwargs(StrategySpec.model_validate({"type": "lora"}), GPU) == {}


def test_plan_counts_the_frozen_linear_weights_at_4_bits(tiny_model_dir, job):
    model = tiny_model_dir("llama", "AutoModelForCausalLM")
    plain, qlora = (plan(job(model, strategy).model_copy(update={"task": "causal-lm"}))
                    for strategy in ({"type": "lora"}, QLORA))

    assert qlora["model"]["quantization"] == "4-bit nf4 (bitsandbytes, on the GPUs)"
    assert "quantization" not in plain["model"]
    assert qlora["parameters"] == plain["parameters"]  # the same adapters train
    saved = plain["memory"]["weightsBytes"] - qlora["memory"]["weightsBytes"]
    # 4 layers x (q 32x32, k 32x16, v 32x16, o 32x32, gate/up 32x64 x2, down 64x32): fp32 -> 4 bits saves 3.5 B each
    linear = 4 * (32 * 32 * 2 + 32 * 16 * 2 + 32 * 64 * 3)
    assert saved == linear * 3.5
