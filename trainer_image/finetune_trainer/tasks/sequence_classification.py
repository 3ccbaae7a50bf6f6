"""Sequence classification: one text or a pair of texts → one of K labels (sentiment, paraphrase, NLI).

Labels may be class ids (0..K-1, also as strings such as GLUE's "0"/"1") or names (sorted, then numbered).
Metrics: eval_loss, eval_accuracy, eval_f1 (F1 of class 1 for two classes, macro F1 for more).
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

from finetune_trainer.config import DatasetSpec, Task
from finetune_trainer.errors import DataError
from finetune_trainer.tasks.base import PreparedData, RawSplits, TaskAdapter, register
from finetune_trainer.tasks.columns import check_columns, conventional_columns, texts, tokenize_splits
from finetune_trainer.tasks.evaluation import RunningMean, eval_batches, length_order

# Conventional columns, tried in order when dataset.columns.text or .label is unset.
TEXT_CANDIDATES = (["text"], ["sentence"], ["sentence1", "sentence2"], ["question", "sentence"],
                   ["premise", "hypothesis"], ["question1", "question2"])
LABEL_CANDIDATES = (["label"], ["labels"])
_INT = re.compile(r"^-?\d+$")


@register
class SequenceClassificationTask(TaskAdapter):
    task = Task.SEQUENCE_CLASSIFICATION
    auto_model = "AutoModelForSequenceClassification"
    higher_is_better = {"eval_loss": False, "eval_accuracy": True, "eval_f1": True}

    def prepare(self, raw: RawSplits, tokenizer: Any, dataset: DatasetSpec) -> PreparedData:
        text = list(dataset.columns.text or conventional_columns(raw, "text", TEXT_CANDIDATES))
        label = dataset.columns.label or conventional_columns(raw, "label", LABEL_CANDIDATES)[0]
        check_columns(raw, {"text": text, "label": [label]})
        names, to_id = _label_mapping(raw, label)

        def encode(batch: dict[str, list], indices: list[int], split_name: str) -> dict[str, list]:
            segments = [texts(batch, {"text": column}, "text", indices, split_name) for column in text]
            encoded = tokenizer(*segments, truncation=True, max_length=dataset.max_length)
            encoded["labels"] = [to_id(v) for v in batch[label]]
            encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
            return encoded

        train, eval_ = tokenize_splits(raw, encode)
        return PreparedData(
            train=train, eval=eval_.select(length_order(eval_)) if eval_ is not None else None,
            model_kwargs={"num_labels": len(names), "id2label": dict(enumerate(names)),
                          "label2id": {n: i for i, n in enumerate(names)}},
            info={"labels": names, "textColumns": text, "labelColumn": label},
        )

    def evaluate(self, model: Any, data: PreparedData, tokenizer: Any, batch_size: int,
                 device: Any) -> dict[str, float]:
        loss, predictions, references = RunningMean(), [], []
        for rows, batch, out in eval_batches(model, data.eval, batch_size, partial(self.collate, tokenizer), device):
            loss.add(out.loss, len(rows))
            predictions += out.logits.float().argmax(-1).tolist()
            references += batch["labels"].tolist()
        num_labels = len(data.model_kwargs["id2label"])
        return {"eval_loss": loss.mean,
                "eval_accuracy": sum(p == r for p, r in zip(predictions, references)) / len(references),
                "eval_f1": f1_score(predictions, references, num_labels)}


def f1_score(predictions: list[int], references: list[int], num_labels: int) -> float:
    """F1 of class 1 for binary tasks (the GLUE convention), macro-averaged F1 otherwise."""
    def f1(cls: int) -> float:
        tp = sum(p == cls and r == cls for p, r in zip(predictions, references))
        fp = sum(p == cls and r != cls for p, r in zip(predictions, references))
        fn = sum(p != cls and r == cls for p, r in zip(predictions, references))
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0

    return f1(1) if num_labels == 2 else sum(f1(c) for c in range(num_labels)) / num_labels


def _label_mapping(raw: RawSplits, label: str):
    """Label names in id order, and the function from a raw label value to its id."""
    def key(value: Any) -> str:
        if value is None or (isinstance(value, str) and not value.strip()):
            raise DataError(f'dataset.columns.label: column "{label}" has an empty value',
                            field="dataset.columns.label")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return str(value).strip()

    train_keys = {key(v) for v in raw.train[label]}
    if all(_INT.match(k) for k in train_keys):
        ids = sorted(int(k) for k in train_keys)
        if ids[0] < 0:
            raise DataError(f'dataset.columns.label: column "{label}" holds negative class ids ({ids[0]}); use ids '
                            "0..K-1 or label names", field="dataset.columns.label")
        names = [str(i) for i in range(ids[-1] + 1)]
    else:
        names = sorted(train_keys)
    index = {n: i for i, n in enumerate(names)}

    def to_id(value: Any) -> int:
        k = key(value)
        if k not in index:
            raise DataError(f'dataset.columns.label: label "{k}" is not among the training labels {names}',
                            field="dataset.columns.label")
        return index[k]

    return names, to_id
