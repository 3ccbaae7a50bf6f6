"""training.batchTokens on a tiny causal LM: no tensor the model gets in training or evaluation holds more cells
(rows x width) than the cap, the run still learns, every labelled token of a step weighs the same whatever
micro-batch it is in, and a run resumed mid-epoch ends with the weights of one never interrupted."""

from __future__ import annotations

import json
import math
import random
import shutil

import pytest
import torch
from finetune_trainer import batching, models
from finetune_trainer.config import TrainerConfig
from finetune_trainer.tasks.base import get_task
from finetune_trainer.train import run
from safetensors.torch import load_file
from tiny_models import instruction_rows, one_torch_thread, tiny_model, write_rows  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CAP = 128  # batchTokens: two rows of maxLength 64, where batchSize 16 alone would allow 16 x 64 = 1024 cells


def text_rows(n: int, seed: int) -> list[dict[str, str]]:
    """Texts of 1 to 10 sentences (about 12 to 150 tokens): short ones and ones cut into several 64-token rows."""
    rng = random.Random(seed)
    sentences = [f"{r['prompt']} {r['response']}" for r in instruction_rows(200, seed)]
    return [{"text": " ".join(rng.sample(sentences, rng.randint(1, 10)))} for _ in range(n)]


@pytest.fixture
def lm_job(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    write_rows(text_rows(48, seed=0), data / "train.jsonl")
    write_rows(text_rows(12, seed=1), data / "validation.jsonl")
    model = tiny_model_dir("llama", "AutoModelForCausalLM")

    def make(output, **training) -> TrainerConfig:
        return TrainerConfig.model_validate({
            "name": "tokens", "model": {"source": str(model)}, "task": "causal-lm",
            "dataset": {"source": str(data), "maxLength": 64}, "strategy": {"type": "full"},
            "training": {"epochs": 2, "batchSize": 16, "batchTokens": CAP, "gradientAccumulation": 2,
                         "learningRate": 3e-3, "warmupRatio": 0.0, "logEvery": 1, **training},
            "output": {"location": str(output), "keepCheckpoints": 100}, "metricsPort": 0,
        })

    return make


@pytest.fixture
def forwards(monkeypatch):
    """What the model really gets: (training?, input_ids shape, loss) of every forward call, recorded by hooks on
    the model the trainer loads."""
    seen: list[tuple[bool, tuple[int, ...], float]] = []
    load = models.load_model

    def load_and_watch(*args, **kwargs):
        model = load(*args, **kwargs)

        def record(module, _args, inputs, outputs):
            if outputs.loss is not None:  # not the layer resolution's trace, which has no labels
                seen.append((module.training, tuple(inputs["input_ids"].shape), outputs.loss.item()))

        model.register_forward_hook(record, with_kwargs=True)
        return model

    monkeypatch.setattr(models, "load_model", load_and_watch)
    return seen


def test_no_micro_batch_exceeds_the_cap_and_the_run_learns(tmp_path, lm_job, forwards):
    summary = run(lm_job(tmp_path / "out"))

    assert summary["phase"] == "Succeeded"
    train = [(shape, loss) for training, shape, loss in forwards if training]
    evaluation = [shape for training, shape, _ in forwards if not training]
    assert max(rows * width for (rows, width), _ in train) <= CAP
    assert max(rows * width for rows, width in evaluation) <= CAP
    assert any(rows > 1 for (rows, _), _ in train)  # packing still fills the budget with several rows
    # The cap, not batchSize, cut the batches: batchSize 16 alone would make ceil(rows / 16) per epoch.
    rows_per_epoch = summary["usage"]["samples"] / 2
    assert len(train) / 2 > 2 * math.ceil(rows_per_epoch / 16)
    # Two micro-batches a step: the steps are the accumulation windows of both epochs.
    assert summary["progress"]["step"] == summary["progress"]["totalSteps"] >= len(train) / 2
    losses = [loss for _, loss in train]
    assert sum(losses[-6:]) / 6 < 0.7 * sum(losses[:6]) / 6


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, lm_job):
    output = tmp_path / "out"
    first = run(lm_job(output, saveEvery=3))
    straight = load_file(str(output / "model" / "model.safetensors"))
    checkpoints = sorted(int(p.name[5:]) for p in (output / "checkpoints").glob("step-*"))
    middle = next(s for s in checkpoints if s >= first["progress"]["totalSteps"] // 4)  # mid-epoch 0
    # As if the run had been killed after that checkpoint: later checkpoints and the exported model are gone.
    for step in checkpoints:
        if step > middle:
            shutil.rmtree(output / "checkpoints" / f"step-{step}")
    shutil.rmtree(output / "model")
    (output / "export.json").unlink()

    resumed = run(lm_job(output, saveEvery=3))

    assert resumed["phase"] == "Succeeded" and resumed["progress"]["step"] == first["progress"]["step"]
    again = load_file(str(output / "model" / "model.safetensors"))
    assert again.keys() == straight.keys()
    assert all(torch.equal(again[k], straight[k]) for k in again), [k for k in again
                                                                   if not torch.equal(again[k], straight[k])]


def test_every_labelled_token_of_a_step_weighs_the_same_whatever_its_micro_batch():
    """Two micro-batches of 1 and 5 examples, weighted by loss_weights, give the gradient of one batch holding all
    six: the per-token mean, not the mean of the two micro-batch means."""
    from tiny_models import tiny_tokenizer

    task, tokenizer = get_task("causal-lm"), tiny_tokenizer("gpt2")
    task.row_tokens = 256
    features = [{"input_ids": ids, "labels": [-100] + ids[1:], "length": len(ids)}
                for ids in (tokenizer(r["prompt"] + " " + r["response"])["input_ids"] for r in instruction_rows(6))]
    model = tiny_model("gpt2", task.auto_model, use_cache=False).eval()  # no dropout: the same logits both ways

    def gradient(micro_batches, units=True):
        model.zero_grad()
        batches = [task.collate(tokenizer, f) for f in micro_batches]
        weights = batching.loss_weights([task.loss_units(b) if units else None for b in batches], float, 1)
        for batch, weight in zip(batches, weights):
            (model(**batch).loss * weight).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    whole = gradient([features])
    split = gradient([features[:1], features[1:]])
    assert torch.allclose(split, whole, atol=1e-6, rtol=1e-4)
    # The mean of the micro-batch means (what a task without loss units gets) over-weighs the lone example.
    assert not torch.allclose(gradient([features[:1], features[1:]], units=False), whole, atol=1e-6, rtol=1e-4)
    units = [task.loss_units(task.collate(tokenizer, f)) for f in (features[:1], features[1:])]
    assert units[0] < units[1] and sum(units) == sum(len(f["input_ids"]) - 1 for f in features)


def test_two_processes_share_the_token_bounded_batches(tmp_path, lm_job):
    """Under torchrun (gloo, 2 CPU processes) every rank runs as many micro-batches per epoch, and the per-token
    loss weighting sums the step's tokens over both ranks."""
    from test_runtime import torchrun

    path = tmp_path / "config.json"
    path.write_text(lm_job(tmp_path / "out").model_dump_json(by_alias=True, exclude_none=True))

    result = torchrun(path, tmp_path)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["phase"] == "Succeeded" and summary["progress"]["step"] == summary["progress"]["totalSteps"]
    assert "x2" in result.stdout and math.isfinite(summary["metrics"]["evalLoss"])
