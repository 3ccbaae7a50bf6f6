"""Seq2seq: source/target features, label padding, data errors, corpus scores, and a few real training steps on
tiny T5 and BART models followed by batched greedy generation."""

from __future__ import annotations

import pytest
from datasets import Dataset
from finetune_trainer.config import DatasetSpec
from finetune_trainer.errors import DataError
from finetune_trainer.tasks.base import RawSplits, get_task
from finetune_trainer.tasks.seq2seq import text_scores
from tiny_models import (
    one_torch_thread,  # noqa: F401  (a fixture, used by pytestmark)
    run_tiny_job,
    tiny_model,
    tiny_tokenizer,
    train_steps,
    translation_rows,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def prepare(rows, eval_rows=None, arch="t5", max_length=24, **spec):
    task, tokenizer = get_task("seq2seq"), tiny_tokenizer(arch)
    raw = RawSplits(Dataset.from_list(rows), Dataset.from_list(eval_rows) if eval_rows else None)
    return task, tokenizer, task.prepare(raw, tokenizer, DatasetSpec(source="unused", maxLength=max_length, **spec))


def test_features_hold_source_and_target_and_labels_pad_with_ignore():
    rows = translation_rows(2) + [{"source": "the dog is big and the cat is small .", "target": "ja ."}]
    task, tokenizer, data = prepare(rows)
    features = data.train.to_list()
    batch = task.collate(tokenizer, features)

    assert tokenizer.decode(features[0]["labels"], skip_special_tokens=True) == rows[0]["target"]
    assert all(f["length"] == len(f["input_ids"]) + len(f["labels"]) for f in features)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    short = batch["labels"][2]
    assert (short == -100).sum() == batch["labels"].shape[1] - len(features[2]["labels"])
    assert (batch["input_ids"][0] == tokenizer.pad_token_id).any()  # the long source set the batch width


def test_columns_can_be_mapped_and_a_missing_one_is_named():
    rows = [{"en": r["source"], "de": r["target"]} for r in translation_rows(2)]
    with pytest.raises(DataError) as error:
        prepare(rows)
    assert error.value.field == "dataset.columns.prompt"
    assert "'source'" in str(error.value) and "columns present: en, de" in str(error.value)
    _, _, data = prepare(rows, rows, columns={"prompt": "en", "target": "de"})
    assert sorted(data.eval_examples["target"]) == sorted(r["de"] for r in rows)


def test_text_must_be_strings():
    with pytest.raises(DataError, match="row 0 of the train split must be text") as error:
        prepare([{"source": "a", "target": None}])
    assert error.value.field == "dataset.columns.target"


def test_scores_are_corpus_bleu_and_chrf():
    references = [r["target"] for r in translation_rows(4)]
    assert text_scores(references, references) == {"eval_bleu": pytest.approx(100.0),
                                                   "eval_chrf": pytest.approx(100.0)}
    assert text_scores(["x"] * 4, references)["eval_chrf"] < 10.0


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_trains_and_scores_generations(arch):
    task, tokenizer, data = prepare(translation_rows(32), translation_rows(8, seed=1), arch=arch, max_length=16)
    model = tiny_model(arch, task.auto_model)
    features = data.train.to_list()
    batches = [task.collate(tokenizer, features[s:s + 8]) for s in range(0, 32, 8)]
    before = task.evaluate(model, data, tokenizer, 4, "cpu")

    losses = train_steps(model, batches, steps=40)
    after = task.evaluate(model, data, tokenizer, 4, "cpu")

    assert losses[-1] < losses[0] / 2
    assert set(after) == {"eval_loss", "eval_bleu", "eval_chrf"} <= set(task.higher_is_better)
    assert after["eval_loss"] < before["eval_loss"]
    assert after["eval_chrf"] > before["eval_chrf"] and 0.0 <= after["eval_bleu"] <= 100.0


def test_runs_end_to_end_and_reports_bleu_and_chrf(tmp_path):
    summary = run_tiny_job(tmp_path, "seq2seq", "bart", translation_rows(32), translation_rows(8, seed=1),
                           max_length=16)

    assert summary["phase"] == "Succeeded"
    assert 0.0 <= summary["metrics"]["evalChrf"] <= 100.0 and 0.0 <= summary["metrics"]["evalBleu"] <= 100.0
    assert "evalLoss" in summary["metrics"]
