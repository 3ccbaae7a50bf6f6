"""Each strategy on each architecture family: the parameters that change in a few real training steps are
exactly the plan's trainable set, every other tensor is bit-identical, and hybrid puts LoRA only on the
blocks that do not train fully."""

from __future__ import annotations

import pytest
import torch
from finetune_trainer import runtime
from finetune_trainer.locations import local_path
from finetune_trainer.plan import plan
from finetune_trainer.summary import Report
from finetune_trainer.telemetry import Telemetry
from finetune_trainer.stopping import StopSignal
from finetune_trainer.train import Recipe

ARCHS = ["bert", "gpt2", "llama", "t5", "bart"]
STRATEGIES = {
    "full": {"type": "full"},
    "partial": {"type": "partial", "layers": "last:1"},
    "partial-parts": {"type": "partial", "layers": "first:1", "parts": ["attention", "norm"], "embeddings": True},
    "hybrid": {"type": "hybrid", "layers": "last:1"},
    "lora": {"type": "lora"},
}


def train_in_process(config):
    """Run the real recipe (setup, loop, checkpoints) and return it with the tensors before and after."""
    rt = runtime.setup(config.training)
    recipe = Recipe(config, local_path(config.output.location), rt, Telemetry(config.name),
                    Report(config.output.location), StopSignal(), progress_bar=False)
    recipe.setup()
    before = {n: p.detach().clone() for n, p in recipe.model.named_parameters()}
    recipe.train()
    after = dict(recipe.model.named_parameters())
    changed = {n for n, p in after.items() if not torch.equal(before[n], p.detach())}
    return recipe, changed


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("arch", ARCHS)
def test_changed_parameters_are_exactly_the_trainable_set(arch, strategy, tiny_model_dir, job):
    config = job(tiny_model_dir(arch), STRATEGIES[strategy], maxSteps=3)
    planned = plan(config)

    recipe, changed = train_in_process(config)

    assert changed == set(planned["trainable"])
    assert planned["parameters"]["trainable"] == sum(planned["trainable"].values())
    assert recipe.strategy.trainable_set()["trainable"] == planned["trainable"]
    if strategy == "full":
        assert planned["parameters"]["trainable"] == planned["parameters"]["total"]
    else:
        assert 0 < planned["parameters"]["trainable"] < planned["parameters"]["total"]


@pytest.mark.parametrize("arch", ["bert", "t5"])
def test_hybrid_puts_lora_only_on_the_frozen_blocks(arch, tiny_model_dir, job):
    config = job(tiny_model_dir(arch), {"type": "hybrid", "layers": "last:2"}, maxSteps=2)
    recipe, changed = train_in_process(config)
    layout, strategy = recipe.layout, recipe.strategy
    selected = {layout.blocks[i].name for i in strategy.full_blocks}
    others = {b.name for b in layout.blocks} - selected

    adapted = {name for name in changed if ".lora_" in name}
    assert adapted
    assert all(any(f".{block}." in name for block in others) for name in adapted)
    assert not any(f".{block}." in name for name in adapted for block in selected)
    # The selected blocks train their own weights, fully.
    for i in strategy.full_blocks:
        for name in layout.block_params[i]:
            assert any(n.endswith(name) for n in changed), name


def test_lora_targets_by_name_and_parts(tiny_model_dir, job):
    named = plan(job(tiny_model_dir("llama"), {"type": "lora", "lora": {"targets": ["q_proj", "v_proj"]}}))
    assert named["loraTargets"] == {"count": 8, "names": ["q_proj", "v_proj"]}
    mlp_only = plan(job(tiny_model_dir("llama"), {"type": "lora", "parts": ["mlp"], "layers": "last:2"}))
    assert mlp_only["loraTargets"] == {"count": 6, "names": ["down_proj", "gate_proj", "up_proj"]}
    assert mlp_only["blocks"]["lora"] == [2, 3]


def test_lora_targets_that_match_nothing_are_refused(tiny_model_dir, job):
    from finetune_trainer.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        plan(job(tiny_model_dir("bert"), {"type": "lora", "lora": {"targets": ["q_proj"]}}))
    assert info.value.field == "strategy.lora.targets"
    assert "query" in str(info.value)


def test_staged_unfreezing_moves_a_block_to_full_training(tiny_model_dir, job):
    strategy = {"type": "hybrid", "layers": "last:1", "unfreeze": [{"epoch": 1, "layers": "2"}]}
    config = job(tiny_model_dir("bert"), strategy, epochs=2, batchSize=32)
    planned = plan(config)
    assert planned["stages"] == [{"epoch": 1, "blocks": [2]}]

    recipe, changed = train_in_process(config)

    assert recipe.strategy.full_blocks == [2, 3]
    block2 = [n for n in changed if ".layer.2." in n and ".lora_" not in n]
    assert block2 and set(planned["trainable"]) < changed
    assert changed == set(recipe.strategy.trainable_names())


def test_partial_runs_the_frozen_prefix_in_eval_mode(tiny_model_dir, job):
    config = job(tiny_model_dir("bert"), {"type": "partial", "layers": "last:1"}, maxSteps=1)
    recipe, _ = train_in_process(config)
    recipe._train_mode()
    blocks = recipe.layout.blocks
    assert [b.module.training for b in blocks] == [False, False, False, True]
    assert not recipe.model.bert.embeddings.training and recipe.model.classifier.training


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_under_autocast_adapters_take_their_input_as_autocast_casts_it(precision, tiny_model_dir, job):
    config = job(tiny_model_dir("bert"), {"type": "lora"}, maxSteps=2, precision=precision)
    recipe, changed = train_in_process(config)
    layers = [m for m in recipe.model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert layers and all(m.cast_input_dtype_enabled == (precision == "fp32") for m in layers)
    assert any(".lora_" in name for name in changed)
