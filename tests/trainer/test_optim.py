"""Optimizers, parameter groups and learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch
from finetune_trainer.config import Optimizer, Schedule, StrategySpec, TrainingSpec
from finetune_trainer.layers import resolve_layout
from finetune_trainer.optim import (build_optimizer, lr_factor, parameter_groups, rebuild_optimizer,
                                    set_learning_rate, total_steps, warmup_steps)
from finetune_trainer.strategies import build_strategy
from tiny_models import tiny_model


def bert(strategy="full", **spec):
    model = tiny_model("bert", "AutoModelForSequenceClassification", num_labels=2)
    layout = resolve_layout(model)
    build_strategy(model, layout, StrategySpec(type=strategy, **spec))
    return model, layout


def test_no_weight_decay_on_biases_and_norms():
    model, layout = bert()
    groups = parameter_groups(model, layout, TrainingSpec(weight_decay=0.1))
    decayed = {id(p) for g in groups if g["weight_decay"] for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == (p.ndim >= 2), name


def test_only_trainable_parameters_get_optimizer_state():
    model, layout = bert("partial", layers="last:1")
    training = TrainingSpec(learning_rate=2e-4)  # a TrainerConfig resolves an unset rate
    optimizer = build_optimizer(parameter_groups(model, layout, training), training)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}


def test_layerwise_decay_lowers_the_rate_with_depth():
    model, layout = bert()
    groups = parameter_groups(model, layout, TrainingSpec(learning_rate=1.0, layerwise_lr_decay=0.5))
    rate = {id(p): g["lr"] for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert rate[id(params["classifier.weight"])] == 1.0
    assert rate[id(params["bert.encoder.layer.3.output.dense.weight"])] == 0.5
    assert rate[id(params["bert.encoder.layer.0.output.dense.weight"])] == 0.5 ** 4
    assert rate[id(params["bert.embeddings.word_embeddings.weight"])] == 0.5 ** 5


@pytest.mark.parametrize("kind", list(Optimizer))
def test_every_optimizer_steps(kind):
    model, layout = bert("partial", layers="last:1")
    training = TrainingSpec(optimizer=kind, learning_rate=1e-2)
    optimizer = build_optimizer(parameter_groups(model, layout, training), training)
    before = model.classifier.weight.detach().clone()
    ids = torch.randint(5, 100, (2, 6))
    model(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()
    optimizer.step()
    assert not torch.equal(before, model.classifier.weight)


def test_rebuilt_optimizer_keeps_existing_state():
    model, layout = bert("partial", layers="last:1")
    training = TrainingSpec(learning_rate=2e-4)
    old = build_optimizer(parameter_groups(model, layout, training), training)
    model(input_ids=torch.randint(5, 100, (2, 6)), labels=torch.tensor([0, 1])).loss.backward()
    old.step()
    for p in model.bert.encoder.layer[2].parameters():
        p.requires_grad_(True)
    new = rebuild_optimizer(old, parameter_groups(model, layout, training), training)
    assert torch.equal(new.state[model.classifier.weight]["exp_avg"], old.state[model.classifier.weight]["exp_avg"])
    assert sum(len(g["params"]) for g in new.param_groups) > sum(len(g["params"]) for g in old.param_groups)


@pytest.mark.parametrize(("schedule", "expected"), [
    (Schedule.LINEAR, [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]),
    (Schedule.CONSTANT, [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]),
    (Schedule.COSINE, [0.5, 1.0, 1.0, 0.8535533905932737, 0.5, 0.14644660940672627]),
])
def test_schedules_warm_up_then_decay(schedule, expected):
    assert [lr_factor(step, 6, 2, schedule) for step in range(6)] == pytest.approx(expected)


def test_warmup_and_rate_setting():
    assert warmup_steps(100, 0.06) == 6 and warmup_steps(10, 0.0) == 0
    model, layout = bert()
    training = TrainingSpec(learning_rate=0.1)
    optimizer = build_optimizer(parameter_groups(model, layout, training), training)
    assert set_learning_rate(optimizer, 0.5) == pytest.approx(0.05)


@pytest.mark.parametrize("epochs, max_steps, expected", [
    (3, None, 10 + 7 + 9),  # ceil(20/2) + ceil(13/2) + ceil(17/2): each epoch's own windows
    (2.5, None, 10 + 7 + 5),  # half of the third epoch's 9 windows, rounded up
    (0.3, None, 3),
    (3, 12, 12),
])
def test_total_steps_add_up_each_epochs_windows(epochs, max_steps, expected):
    batches = {0: 20, 1: 13, 2: 17}
    training = TrainingSpec(epochs=epochs, gradientAccumulation=2, maxSteps=max_steps)
    assert total_steps(batches.__getitem__, training) == expected


def test_total_steps_with_equal_epochs_are_epochs_times_windows():
    for epochs in (0.1, 1, 2.1, 2.3, 3, 7.7):
        training = TrainingSpec(epochs=epochs, gradientAccumulation=3)
        assert total_steps(lambda _: 31, training) == math.ceil(epochs * math.ceil(31 / 3))
