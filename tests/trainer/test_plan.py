"""plan(): resolves a job without training or data: blocks, modules, counts, memory; refuses impossible specs."""

from __future__ import annotations

import pytest
from finetune_trainer.errors import LayerSelectionError, ModelLoadError
from finetune_trainer.plan import plan


def test_plan_reports_blocks_modules_and_counts_without_data(tiny_model_dir, job, tmp_path):
    config = job(tiny_model_dir("bert"), {"type": "partial", "layers": "last:2"}, data=tmp_path / "no-data-here")
    result = plan(config)

    assert result["model"]["class"] == "BertForSequenceClassification" and result["model"]["modelType"] == "bert"
    assert result["stacks"] == [{"name": "bert.encoder.layer", "blockClass": "BertLayer", "blocks": 4}]
    assert result["blocks"] == {"total": 4, "trainFully": [2, 3], "lora": [], "frozen": [0, 1]}
    assert result["modules"]["head"] and not result["modules"]["embeddings"]
    assert result["parameters"]["trainable"] == sum(result["trainable"].values())
    assert all(".layer.2." in n or ".layer.3." in n or "pooler" in n or "classifier" in n for n in result["trainable"])


def test_memory_estimate_shrinks_with_what_trains(tiny_model_dir, job):
    model = tiny_model_dir("bert")
    full = plan(job(model, {"type": "full"}))["memory"]
    partial = plan(job(model, {"type": "partial", "layers": "last:1"}))["memory"]
    lora = plan(job(model, {"type": "lora"}))["memory"]
    assert full["totalBytes"] > partial["totalBytes"]
    assert full["optimizerBytes"] > lora["optimizerBytes"] and full["gradientBytes"] > partial["gradientBytes"]
    assert partial["activationBytes"] < full["activationBytes"]  # the frozen prefix keeps no activations
    assert full["totalBytes"] == sum(v for k, v in full.items() if k != "totalBytes")


def test_impossible_layer_selection_is_refused_with_the_block_count(tiny_model_dir, job):
    with pytest.raises(LayerSelectionError) as info:
        plan(job(tiny_model_dir("bert"), {"type": "partial", "layers": "last:30"}))
    assert str(info.value) == ('strategy.layers "last:30" selects 30 blocks but the model has 4 (BertLayer); '
                               "use last:N with N <= 4")
    assert info.value.field == "strategy.layers" and info.value.exit_code == 2


def test_unknown_model_is_refused(job, tmp_path):
    with pytest.raises(ModelLoadError) as info:
        plan(job(tmp_path / "missing", {"type": "full"}))
    assert info.value.field == "model.source"


def test_hybrid_and_lora_plans_list_adapters(tiny_model_dir, job):
    hybrid = plan(job(tiny_model_dir("gpt2"), {"type": "hybrid", "layers": "last:1", "lora": {"r": 4}}))
    assert hybrid["blocks"]["trainFully"] == [3] and hybrid["blocks"]["lora"] == [0, 1, 2]
    assert hybrid["loraTargets"] == {"count": 12, "names": ["c_attn", "c_fc", "c_proj"]}
    assert any(".lora_A." in n for n in hybrid["trainable"])


@pytest.mark.parametrize(("strategy", "batch", "accumulation", "rate"), [
    ({"type": "full"}, 32, 1, 1e-4), ({"type": "full"}, 8, 1, 5e-5),  # at batch 8: the seed recipe's own rate
    ({"type": "partial", "layers": "last:2"}, 32, 1, 2e-4), ({"type": "hybrid", "layers": "last:1"}, 32, 1, 6e-4),
    ({"type": "lora"}, 32, 1, 8e-4), ({"type": "lora"}, 16, 8, 1.6e-3),  # 128 examples a step: 4x batch 32, so 2x the rate
])
def test_an_unset_learning_rate_follows_the_strategy_and_the_batch(tiny_model_dir, job, strategy, batch,
                                                                   accumulation, rate):
    config = job(tiny_model_dir("bert"), strategy, batchSize=batch, gradientAccumulation=accumulation,
                 learningRate=None)
    assert config.training.learning_rate == rate
    assert plan(config)["training"] == {"epochs": 1, "learningRate": rate, "learningRateFrom": "default"}


@pytest.mark.parametrize(("strategy", "batch", "rate"), [
    ({"type": "full"}, 16, 7.1e-5), ({"type": "partial", "layers": "last:2"}, 32, 2e-4), ({"type": "lora"}, 32, 8e-4),
])
def test_an_unset_batch_size_follows_the_strategy_and_sets_the_rate(tiny_model_dir, job, strategy, batch, rate):
    config = job(tiny_model_dir("bert"), strategy, batchSize=None, learningRate=None)
    assert (config.training.batch_size, config.training.learning_rate) == (batch, rate)
    assert job(tiny_model_dir("bert"), strategy, batchSize=4).training.batch_size == 4  # a given size wins


def test_a_learning_rate_in_the_spec_wins_and_plan_says_so(tiny_model_dir, job):
    config = job(tiny_model_dir("bert"), {"type": "lora"}, learningRate=3e-5)
    assert config.training.learning_rate == 3e-5 and plan(config)["training"]["learningRateFrom"] == "spec"


def test_plan_shows_what_bounds_a_micro_batch(tiny_model_dir, job):
    from finetune_trainer.config import TrainerConfig

    spec = job(tiny_model_dir("gpt2", "AutoModelForCausalLM"), {"type": "full"}).wire()
    spec["task"], spec["dataset"]["maxLength"] = "causal-lm", 512
    spec["training"] |= {"batchSize": 32, "gradientAccumulation": 2}
    by_examples = plan(TrainerConfig.model_validate(spec))
    spec["training"]["batchTokens"] = 4096
    by_tokens = plan(TrainerConfig.model_validate(spec))

    assert by_examples["batch"] == {"examples": 32, "tokens": 32 * 512, "boundBy": "batchSize",
                                    "gradientAccumulation": 2, "tokensPerStep": 2 * 32 * 512}
    assert by_tokens["batch"] == {"examples": 32, "tokens": 4096, "boundBy": "batchTokens",
                                  "gradientAccumulation": 2, "tokensPerStep": 2 * 4096}
    # Activation memory follows the tokens of a micro-batch.
    assert by_tokens["memory"]["activationBytes"] * 4 == by_examples["memory"]["activationBytes"]
