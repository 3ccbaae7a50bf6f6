"""Token classification (NER): one tag per word, learned on the first sub-token of each word.

Rows hold a word list (``dataset.columns.tokens``, default ``tokens``) and one tag per word
(``dataset.columns.label``, default ``ner_tags``): tag strings such as ``B-PER``, or ids with a ``ClassLabel`` that
names them. Entity-level scores need IOB-style names; bare integer ids still train and report token accuracy.
"""

from __future__ import annotations

from bisect import bisect_right
from functools import partial
from typing import Any

from finetune_trainer.config import DatasetSpec, Task
from finetune_trainer.errors import DataError
from finetune_trainer.tasks.base import PreparedData, RawSplits, TaskAdapter, pad_multiple, register
from finetune_trainer.tasks.columns import model_inputs, resolve_columns, splits, tokenize_splits
from finetune_trainer.tasks.evaluation import RunningMean, eval_batches, length_order

IGNORE = -100  # label id that the loss and the metrics skip: special tokens, padding, non-first sub-tokens
OUTSIDE = "O"


@register
class TokenClassificationTask(TaskAdapter):
    task = Task.TOKEN_CLASSIFICATION
    auto_model = "AutoModelForTokenClassification"
    higher_is_better = {"eval_loss": False, "eval_precision": True, "eval_recall": True, "eval_f1": True,
                        "eval_accuracy": True}

    def prepare(self, raw: RawSplits, tokenizer: Any, dataset: DatasetSpec) -> PreparedData:
        columns = resolve_columns(raw, dataset, {"tokens": "tokens", "label": "ner_tags"})
        labels = label_names(raw, columns["label"])
        label_ids = {name: i for i, name in enumerate(labels)}

        def encode(batch: dict[str, list], indices: list[int], split_name: str) -> dict[str, list]:
            words, tags = batch[columns["tokens"]], batch[columns["label"]]
            for row, row_words, row_tags in zip(indices, words, tags):
                check_row(row, split_name, row_words, row_tags)
            # Words are joined with spaces and mapped back through character offsets, so every tokenizer sees
            # natural text (byte-level BPEs need the leading space) and no is_split_into_words quirks apply.
            encoded = tokenizer([" ".join(w) for w in words], truncation=True, max_length=dataset.max_length,
                                return_offsets_mapping=True)
            offsets = encoded.pop("offset_mapping")
            encoded["labels"] = [
                first_subtoken_labels(row_words, [label_ids[as_name(labels, t)] for t in row_tags], row_offsets)
                for row_words, row_tags, row_offsets in zip(words, tags, offsets)
            ]
            encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
            return encoded

        train, eval_ = tokenize_splits(raw, encode)
        return PreparedData(
            train=train, eval=eval_.select(length_order(eval_)) if eval_ is not None else None,
            model_kwargs={"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": label_ids},
            info={"labels": labels},
        )

    def collate(self, tokenizer: Any, features: list[dict[str, Any]]) -> dict[str, Any]:
        from transformers import DataCollatorForTokenClassification

        rows = model_inputs(tokenizer, features, "labels")
        collator = DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE, return_tensors="pt",
                                                      pad_to_multiple_of=pad_multiple(tokenizer, rows))
        return collator(rows)

    def evaluate(self, model: Any, data: PreparedData, tokenizer: Any, batch_size: int, device: Any) -> dict[str, float]:
        from seqeval.metrics import f1_score, precision_score, recall_score

        id2label = data.model_kwargs["id2label"]
        loss, gold, predicted = RunningMean(), [], []
        collate = partial(self.collate, tokenizer)
        for _, batch, outputs in eval_batches(model, data.eval, batch_size, collate, device):
            labelled = batch["labels"] != IGNORE
            loss.add(outputs.loss, int(labelled.sum()))
            best = outputs.logits.argmax(-1)
            for row_labels, row_best, row_mask in zip(batch["labels"], best, labelled):
                gold.append([id2label[i] for i in row_labels[row_mask].tolist()])
                predicted.append([id2label[i] for i in row_best[row_mask].tolist()])
        words = sum(len(row) for row in gold)
        correct = sum(g == p for gold_row, pred_row in zip(gold, predicted) for g, p in zip(gold_row, pred_row))
        return {
            "eval_loss": loss.mean,
            "eval_precision": float(precision_score(gold, predicted, zero_division=0)),
            "eval_recall": float(recall_score(gold, predicted, zero_division=0)),
            "eval_f1": float(f1_score(gold, predicted, zero_division=0)),
            "eval_accuracy": correct / words if words else float("nan"),
        }


def label_names(raw: RawSplits, column: str) -> list[str]:
    """The tag set, index = label id. Ids with a ClassLabel keep its names; ids without one keep their values
    (names are the ids as text); tag strings are discovered from every split, sorted with "O" first."""
    feature = getattr(raw.train.features[column], "feature", None)
    if feature is not None and hasattr(feature, "names"):
        return list(feature.names)
    tags = {tag for _, split in splits(raw) for row in split[column] for tag in (row or [])}
    if tags and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tags):
        return [str(i) for i in range(max(tags) + 1)]
    if not all(isinstance(t, str) for t in tags):
        raise DataError(f"dataset.columns.label: column {column!r} must hold per-word tags, either all strings "
                        f"(e.g. B-PER) or all non-negative integer ids", field="dataset.columns.label")
    return sorted(tags, key=lambda t: (t != OUTSIDE, t))


def as_name(labels: list[str], tag: str | int) -> str:
    return labels[tag] if isinstance(tag, int) else tag


def check_row(row: int, split_name: str, words: Any, tags: Any) -> None:
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise DataError(f"dataset.columns.tokens: row {row} of the {split_name} split is not a list of words",
                        field="dataset.columns.tokens")
    if not isinstance(tags, list) or len(tags) != len(words):
        raise DataError(f"dataset.columns.label: row {row} of the {split_name} split has "
                        f"{len(tags) if isinstance(tags, list) else 'no'} tags for {len(words)} words",
                        field="dataset.columns.label")


def first_subtoken_labels(words: list[str], word_labels: list[int], offsets: list[tuple[int, int]]) -> list[int]:
    """Per-token labels for ``" ".join(words)``: the word's label on its first sub-token, IGNORE elsewhere."""
    starts, position = [], 0
    for word in words:
        starts.append(position)
        position += len(word) + 1
    labels, previous = [], None
    for start, end in offsets:
        word = word_at(starts, words, end - 1) if end > start else None
        labels.append(word_labels[word] if word is not None and word != previous else IGNORE)
        previous = word if word is not None else previous
    return labels


def word_at(starts: list[int], words: list[str], char: int) -> int | None:
    """The word covering character ``char`` (a token's last character: offsets of byte-level BPE tokens include
    the space before the word), or None for the separating spaces."""
    word = bisect_right(starts, char) - 1
    return word if word >= 0 and char < starts[word] + len(words[word]) else None
