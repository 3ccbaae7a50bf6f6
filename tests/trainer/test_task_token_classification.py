"""Token classification (NER): word/label alignment across tokenizer families, label discovery, data errors, and a
few real training steps on a tiny model followed by entity-level evaluation."""

from __future__ import annotations

import pytest
from datasets import ClassLabel, Dataset, Features, List, Value
from finetune_trainer.config import DatasetSpec
from finetune_trainer.errors import DataError
from finetune_trainer.tasks.base import RawSplits, get_task
from tiny_models import (
    ner_rows,
    one_torch_thread,  # noqa: F401  (a fixture, used by pytestmark)
    run_tiny_job,
    tiny_model,
    tiny_tokenizer,
    train_steps,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = DatasetSpec(source="unused", maxLength=64)


def prepare(rows, eval_rows=None, arch="bert", spec=SPEC):
    task, tokenizer = get_task("token-classification"), tiny_tokenizer(arch)
    raw = RawSplits(Dataset.from_list(rows), Dataset.from_list(eval_rows) if eval_rows else None)
    return task, tokenizer, task.prepare(raw, tokenizer, spec)


@pytest.mark.parametrize("arch", ["bert", "roberta", "t5"])  # WordPiece, byte-level BPE, metaspace BPE
def test_each_word_labels_its_first_subtoken_only(arch):
    words, tags = ["Alice", "visited", "Zürich", "yesterday"], ["B-PER", "O", "B-LOC", "O"]
    task, tokenizer, data = prepare([{"tokens": words, "ner_tags": tags}], arch=arch)
    feature = data.train[0]
    labelled = [i for i, label in enumerate(feature["labels"]) if label != -100]

    assert [data.info["labels"][feature["labels"][i]] for i in labelled] == tags
    for i, word in zip(labelled, words):  # the labelled token is where its word starts
        piece = tokenizer.decode([feature["input_ids"][i]]).strip().lstrip("▁")
        assert piece and word.lower().startswith(piece.lower())
    assert len(feature["input_ids"]) > len(words) + 2  # "Zürich" did split, and its tail stayed unlabelled
    assert feature["length"] == len(feature["input_ids"])


def test_label_set_comes_from_every_split_with_outside_first():
    train = [{"tokens": ["Bob", "ran"], "ner_tags": ["B-PER", "O"]}]
    evaluation = [{"tokens": ["in", "Paris"], "ner_tags": ["O", "B-LOC"]}]
    _, _, data = prepare(train, evaluation)

    assert data.info["labels"] == ["O", "B-LOC", "B-PER"]
    assert data.model_kwargs == {"num_labels": 3, "id2label": {0: "O", 1: "B-LOC", 2: "B-PER"},
                                 "label2id": {"O": 0, "B-LOC": 1, "B-PER": 2}}


def test_class_label_ids_keep_their_names():
    names = ["O", "B-PER", "I-PER"]
    features = Features({"tokens": List(Value("string")), "ner_tags": List(ClassLabel(names=names))})
    raw = RawSplits(Dataset.from_dict({"tokens": [["Ann", "Lee", "sang"]], "ner_tags": [[1, 2, 0]]}, features), None)
    data = get_task("token-classification").prepare(raw, tiny_tokenizer("bert"), SPEC)

    assert data.info["labels"] == names
    assert [label for label in data.train[0]["labels"] if label != -100] == [1, 2, 0]


def test_mapped_columns_are_used():
    rows = [{"words": r["tokens"], "tags": r["ner_tags"]} for r in ner_rows(4)]
    spec = DatasetSpec(source="unused", columns={"tokens": "words", "label": "tags"})
    _, _, data = prepare(rows, spec=spec)
    assert set(data.train.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels", "length"}


def test_missing_column_names_the_field_and_the_columns_present():
    with pytest.raises(DataError) as error:
        prepare([{"words": ["a"], "ner_tags": ["O"]}])
    assert error.value.field == "dataset.columns.tokens"
    assert "'tokens'" in str(error.value) and "words, ner_tags" in str(error.value)


def test_tags_must_match_the_words():
    with pytest.raises(DataError, match=r"row 1 of the train split has 1 tags for 2 words") as error:
        prepare([{"tokens": ["a"], "ner_tags": ["O"]}, {"tokens": ["a", "b"], "ner_tags": ["O"]}])
    assert error.value.field == "dataset.columns.label"


def test_trains_and_reports_entity_scores():
    task, tokenizer, data = prepare(ner_rows(48), ner_rows(16, seed=1))
    model = tiny_model("bert", task.auto_model, id2label=data.model_kwargs["id2label"],
                       label2id=data.model_kwargs["label2id"])
    batches = [task.collate(tokenizer, [data.train[i] for i in range(s, s + 16)]) for s in range(0, 48, 16)]
    before = task.evaluate(model, data, tokenizer, 8, "cpu")

    losses = train_steps(model, batches, steps=45)
    after = task.evaluate(model, data, tokenizer, 8, "cpu")

    assert batches[0]["labels"].shape == batches[0]["input_ids"].shape and "length" not in batches[0]
    assert losses[-1] < losses[0] / 2
    assert set(after) == {"eval_loss", "eval_precision", "eval_recall", "eval_f1", "eval_accuracy"} == set(
        task.higher_is_better)
    assert after["eval_loss"] < before["eval_loss"]
    assert after["eval_accuracy"] > 0.8 and after["eval_f1"] > before["eval_f1"]
    assert model.training  # evaluate hands the model back in the mode it found it


def test_runs_end_to_end_and_reports_entity_f1(tmp_path):
    summary = run_tiny_job(tmp_path, "token-classification", "bert", ner_rows(48), ner_rows(16, seed=1))

    assert summary["phase"] == "Succeeded"
    assert 0.0 <= summary["metrics"]["evalF1"] <= 1.0
    assert {"evalLoss", "evalPrecision", "evalRecall", "evalAccuracy"} <= set(summary["metrics"])
