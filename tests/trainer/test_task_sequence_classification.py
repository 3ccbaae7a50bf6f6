"""Sequence classification end to end: single and pair inputs, label ids or names, multi-class, the metrics,
every strategy's final output loadable, and column errors that name the field."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from finetune_trainer.config import DatasetSpec
from finetune_trainer.errors import DataError
from finetune_trainer.tasks.base import RawSplits, get_task, pad_multiple
from finetune_trainer.tasks.sequence_classification import f1_score
from finetune_trainer.train import run
from tiny_models import pair_rows, sentiment_rows, tiny_tokenizer, write_rows


def prepare(train, evaluation=None, **columns):
    raw = RawSplits(Dataset.from_list(train), Dataset.from_list(evaluation or train[:4]))
    spec = DatasetSpec(source="unused", columns=columns, maxLength=16)
    return get_task("sequence-classification").prepare(raw, tiny_tokenizer("bert"), spec)


def test_pairs_are_encoded_as_two_segments():
    data = prepare(pair_rows(8))
    row = data.train[0]
    assert set(data.train.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels", "length"}
    assert 0 in row["token_type_ids"] and 1 in row["token_type_ids"]
    assert data.info["textColumns"] == ["sentence1", "sentence2"]
    assert row["length"] == len(row["input_ids"]) <= 16


def test_a_batch_is_padded_to_a_multiple_of_8_within_the_tokenizer_limit():
    rows = [{key: value[:n] if isinstance(value, list) else value for key, value in row.items()}
            for row, n in zip(prepare(pair_rows(8)).train.to_list(), (5, 11))]  # rows of 5 and 11 tokens
    batch = get_task("sequence-classification").collate(tiny_tokenizer("bert"), rows)
    assert batch["input_ids"].shape == (2, 16)
    assert batch["attention_mask"].sum(dim=1).tolist() == [5, 11]
    tokenizer = tiny_tokenizer("bert")
    tokenizer.model_max_length = 12  # rounding 11 up would pass what the model takes: the longest row as it is
    assert pad_multiple(tokenizer, [{"input_ids": [1] * 11}]) is None
    assert pad_multiple(tokenizer, [{"input_ids": [1] * 7}]) == 8


def test_label_names_are_sorted_and_numbered():
    rows = [{"review": "good", "mood": m} for m in ["pos", "neg", "neutral", "pos"]]
    data = prepare(rows, text=["review"], label="mood")
    assert data.model_kwargs["id2label"] == {0: "neg", 1: "neutral", 2: "pos"}
    assert data.train["labels"] == [2, 0, 1, 2]


def test_string_ids_are_ids():
    data = prepare([{"text": "a", "label": "1"}, {"text": "b", "label": "0"}, {"text": "c", "label": "2"}])
    assert data.train["labels"] == [1, 0, 2] and data.model_kwargs["num_labels"] == 3


@pytest.mark.parametrize(("columns", "field"), [
    ({"text": ["body"]}, "dataset.columns.text"),
    ({"label": "target"}, "dataset.columns.label"),
])
def test_missing_columns_name_the_field_and_list_the_columns(columns, field):
    with pytest.raises(DataError) as info:
        prepare(sentiment_rows(4), **columns)
    assert info.value.field == field and "not in dataset.train; columns present: text, label" in str(info.value)


def test_eval_labels_must_be_known_from_training():
    with pytest.raises(DataError, match='label "maybe"'):
        prepare([{"text": "a", "label": "yes"}], [{"text": "b", "label": "maybe"}])


def test_f1_is_binary_for_two_classes_and_macro_otherwise():
    assert f1_score([1, 1, 0, 0], [1, 0, 0, 0], 2) == pytest.approx(2 / 3)
    assert f1_score([0, 1, 2], [0, 1, 1], 3) == pytest.approx((1 + 2 / 3 + 0) / 3)


@pytest.mark.parametrize(("strategy", "files"), [
    ({"type": "full"}, {"model.safetensors", "config.json", "tokenizer.json"}),
    ({"type": "partial", "layers": "last:2"}, {"model.safetensors", "config.json"}),
    ({"type": "hybrid", "layers": "last:1"}, {"model.safetensors", "config.json"}),  # merged
    ({"type": "lora"}, {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"}),
])
def test_every_strategy_trains_end_to_end_and_leaves_a_loadable_model(strategy, files, tiny_model_dir, job):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    summary = run(job(tiny_model_dir("bert"), strategy, epochs=2))
    model_dir = summary["output"]["location"]

    assert summary["phase"] == "Succeeded" and summary["exitCode"] == 0
    assert {"trainLoss", "evalLoss", "evalAccuracy", "evalF1", "samplesPerSecond", "tokensPerSecond"} <= set(
        summary["metrics"])
    assert summary["checkpoint"]["step"] == summary["progress"]["totalSteps"] == 24
    assert files <= {p.name for p in __import__("pathlib").Path(model_dir).iterdir()}
    if strategy["type"] == "lora":
        from peft import AutoPeftModelForSequenceClassification

        model = AutoPeftModelForSequenceClassification.from_pretrained(model_dir)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        logits = model(**tokenizer(["the movie was great ."], return_tensors="pt")).logits
    assert logits.shape == (1, 2)


def test_full_fine_tuning_learns_the_tiny_sentiment_task(tiny_model_dir, job):
    summary = run(job(tiny_model_dir("llama"), {"type": "full"}, epochs=4, learningRate=3e-3))
    assert summary["metrics"]["evalAccuracy"] >= 0.9


def test_lora_merged_output(tiny_model_dir, job, tmp_path):
    config = job(tiny_model_dir("llama"), {"type": "lora"}, maxSteps=2)
    config = config.model_copy(update={"output": config.output.model_copy(update={"merge_adapter": True})})
    summary = run(config)
    merged = tmp_path / "out" / "model" / "merged"
    assert (merged / "model.safetensors").is_file() and (merged / "tokenizer.json").is_file()
    assert summary["output"]["location"] == str(tmp_path / "out" / "model")


def test_csv_with_label_names_and_a_pair_tsv(tmp_path, tiny_model_dir, job):
    named = [{"text": r["text"], "label": ["negative", "positive"][r["label"]]} for r in sentiment_rows(40)]
    write_rows(named, tmp_path / "named" / "train.csv")
    summary = run(job(tiny_model_dir("bert"), data=tmp_path / "named", output=tmp_path / "o1", maxSteps=2))
    assert summary["phase"] == "Succeeded"
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tmp_path / "o1" / "model").id2label == {0: "negative", 1: "positive"}

    write_rows(pair_rows(40), tmp_path / "pairs" / "train.tsv")
    summary = run(job(tiny_model_dir("gpt2"), data=tmp_path / "pairs", output=tmp_path / "o2", maxSteps=2,
                      dataset={"columns": {"text": ["sentence1", "sentence2"]}}))
    assert summary["phase"] == "Succeeded"
