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
from finetune_trainer.tasks.metrics import RunningMean, eval_batches

# Conventional text columns, tried in order when dataset.columns.text is unset.
TEXT_CANDIDATES = (["text"], ["sentence"], ["sentence1", "sentence2"], ["question", "sentence"],
                   ["premise", "hypothesis"], ["question1", "question2"])
LABEL_CANDIDATES = ("label", "labels")
_INT = re.compile(r"^-?\d+$")


@register
class SequenceClassification(TaskAdapter):
    task = Task.SEQUENCE_CLASSIFICATION
    auto_model = "AutoModelForSequenceClassification"
    primary_metric = "eval_accuracy"

    def prepare(self, raw: RawSplits, tokenizer: Any, dataset: DatasetSpec) -> PreparedData:
        columns = raw.train.column_names
        text = _text_columns(dataset, columns)
        label = _label_column(dataset, columns)
        if raw.eval is not None:
            missing = [c for c in [*text, label] if c not in raw.eval.column_names]
            if missing:
                raise DataError(f"dataset.eval lacks column(s) {missing}; it has {raw.eval.column_names}",
                                field="dataset.eval")
        names, to_id = _label_mapping(raw, label)

        def encode(batch: dict[str, list]) -> dict[str, list]:
            texts = [[_as_text(v, c) for v in batch[c]] for c in text]
            features = tokenizer(*texts, truncation=True, max_length=dataset.max_length)
            features["labels"] = [to_id(v) for v in batch[label]]
            features["length"] = [len(ids) for ids in features["input_ids"]]
            return features

        def tokenize(split):
            # An explicit fingerprint: datasets would otherwise pickle ``encode`` (and the tokenizer) to hash it.
            return split.map(encode, batched=True, remove_columns=split.column_names,
                             new_fingerprint=f"{split._fingerprint}-sequence-classification")

        # Eval runs in stored order; storing it by length keeps its batches' padding small.
        return PreparedData(
            train=tokenize(raw.train), eval=_by_length(tokenize(raw.eval)) if raw.eval is not None else None,
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


def _text_columns(dataset: DatasetSpec, columns: list[str]) -> list[str]:
    if dataset.columns.text:
        missing = [c for c in dataset.columns.text if c not in columns]
        if missing:
            raise DataError(f"dataset.columns.text: column(s) {missing} not in dataset.train; it has {columns}",
                            field="dataset.columns.text")
        return list(dataset.columns.text)
    for candidate in TEXT_CANDIDATES:
        if all(c in columns for c in candidate):
            return list(candidate)
    raise DataError(f"dataset.columns.text is unset and dataset.train has no text column named "
                    f"{[c[0] for c in TEXT_CANDIDATES]}; it has {columns}. Set dataset.columns.text",
                    field="dataset.columns.text")


def _label_column(dataset: DatasetSpec, columns: list[str]) -> str:
    if dataset.columns.label:
        if dataset.columns.label not in columns:
            raise DataError(f'dataset.columns.label: column "{dataset.columns.label}" not in dataset.train; it has '
                            f"{columns}", field="dataset.columns.label")
        return dataset.columns.label
    found = next((c for c in LABEL_CANDIDATES if c in columns), None)
    if found is None:
        raise DataError(f"dataset.columns.label is unset and dataset.train has no column named label; it has "
                        f"{columns}. Set dataset.columns.label", field="dataset.columns.label")
    return found


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


def _by_length(split: Any) -> Any:
    lengths = split["length"]
    return split.select(sorted(range(len(split)), key=lengths.__getitem__))


def _as_text(value: Any, column: str) -> str:
    if value is None:
        raise DataError(f'dataset.columns.text: column "{column}" has an empty value', field="dataset.columns.text")
    return value if isinstance(value, str) else str(value)
