"""Extractive question answering, SQuAD style: predict the start and end token of the answer span in the context.

Rows hold ``question``, ``context`` and ``answers`` = ``{"text": [...], "answer_start": [...]}`` (character
offsets into the context; the first answer is the training target, all of them count as correct at evaluation).
A context longer than ``maxLength`` is split into overlapping windows (stride ``maxLength // 4``), one feature
each; a window that does not contain the answer is trained to point at its first token (CLS), the "no answer
here" position. Evaluation picks the best-scoring span over all windows of an example. When the training data
has unanswerable examples (empty ``answers.text``, SQuAD 2.0), predicting no answer becomes possible too.
"""

from __future__ import annotations

import re
import string
from collections import Counter, defaultdict
from functools import partial
from typing import Any

import numpy as np

from finetune_trainer.config import DatasetSpec, Task
from finetune_trainer.errors import DataError
from finetune_trainer.tasks.base import PreparedData, RawSplits, TaskAdapter, pad_multiple, register
from finetune_trainer.tasks.columns import by_role, model_inputs, resolve_columns, texts, tokenize_splits
from finetune_trainer.tasks.evaluation import RunningMean, eval_batches

N_BEST = 20  # start and end candidates considered per window
MAX_ANSWER_TOKENS = 30
TARGETS = ("start_positions", "end_positions")
NO_ANSWER = 0  # where a window without the answer points: CLS for encoders, the first token for other models


@register
class QuestionAnsweringTask(TaskAdapter):
    task = Task.QUESTION_ANSWERING
    auto_model = "AutoModelForQuestionAnswering"
    higher_is_better = {"eval_loss": False, "eval_exact_match": True, "eval_f1": True}

    def prepare(self, raw: RawSplits, tokenizer: Any, dataset: DatasetSpec) -> PreparedData:
        columns = resolve_columns(raw, dataset, {"question": "question", "context": "context", "answers": "answers"})
        stride = dataset.max_length // 4
        # The tokenizer needs room for the stride inside the context part of every window, so long questions
        # are cut to what is left after the special tokens and one stride (the Rust tokenizer aborts otherwise).
        question_budget = dataset.max_length - tokenizer.num_special_tokens_to_add(pair=True) - stride - 1
        if question_budget < 1:
            raise DataError(f"dataset.maxLength: {dataset.max_length} tokens leave no room for a question and a "
                            f"context window; raise it", field="dataset.maxLength")

        def encode(batch: dict[str, list], indices: list[int], split_name: str) -> dict[str, list]:
            answers = [check_answers(a, row, split_name) for a, row in zip(batch[columns["answers"]], indices)]
            contexts = texts(batch, columns, "context", indices, split_name, non_empty=True)
            questions = [q.strip() for q in texts(batch, columns, "question", indices, split_name)]
            encoded = tokenizer(clip_questions(tokenizer, questions, question_budget), contexts,
                                truncation="only_second", max_length=dataset.max_length, stride=stride,
                                return_overflowing_tokens=True, return_offsets_mapping=True)
            example_of = encoded.pop("overflow_to_sample_mapping")
            windows = [context_window(encoded.sequence_ids(i)) for i in range(len(example_of))]
            spans = [answer_tokens(answers[example][0], encoded["offset_mapping"][i], windows[i])
                     for i, example in enumerate(example_of)]
            encoded["start_positions"] = [start for start, _ in spans]
            encoded["end_positions"] = [end for _, end in spans]
            encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
            if split_name == "eval":  # what postprocessing needs to map token scores back to context text
                encoded["example_index"] = [indices[example] for example in example_of]
                encoded["context_start"] = [start for start, _ in windows]
                encoded["context_end"] = [end for _, end in windows]
            else:
                encoded.pop("offset_mapping")
            return encoded

        train, eval_ = tokenize_splits(raw, encode)
        eval_examples = by_role(raw.eval, columns, "context", "answers") if raw.eval is not None else None
        unanswerable = any(not a["text"] for a in raw.train[columns["answers"]])
        return PreparedData(train=train, eval=eval_, eval_examples=eval_examples,
                            info={"stride": stride, "unanswerable": unanswerable})

    def collate(self, tokenizer: Any, features: list[dict[str, Any]]) -> dict[str, Any]:
        from transformers import DataCollatorWithPadding

        rows = model_inputs(tokenizer, features, *TARGETS)
        return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_multiple(tokenizer, rows),
                                       return_tensors="pt")(rows)

    def evaluate(self, model: Any, data: PreparedData, tokenizer: Any, batch_size: int, device: Any) -> dict[str, float]:
        loss, scores = RunningMean(), []
        left_pad = tokenizer.padding_side == "left"
        for rows, _, outputs in eval_batches(model, data.eval, batch_size, partial(self.collate, tokenizer), device):
            loss.add(outputs.loss, len(rows))
            for row, start_logits, end_logits in zip(rows, outputs.start_logits, outputs.end_logits):
                real = slice(start_logits.shape[0] - row["length"], None) if left_pad else slice(0, row["length"])
                scores.append((start_logits[real].float().cpu().numpy(), end_logits[real].float().cpu().numpy()))
        predictions = predict_answers(data.eval, scores, data.eval_examples["context"], data.info["unanswerable"])
        golds = [a["text"] or [""] for a in data.eval_examples["answers"]]
        exact = [max(exact_match(p, g) for g in gold) for p, gold in zip(predictions, golds)]
        f1 = [max(token_f1(p, g) for g in gold) for p, gold in zip(predictions, golds)]
        return {"eval_loss": loss.mean, "eval_exact_match": float(np.mean(exact)), "eval_f1": float(np.mean(f1))}


def check_answers(answers: Any, row: int, split_name: str) -> list[tuple[str, int]]:
    """The (text, start) pairs of one row, or a DataError that shows the expected shape."""
    ok = (isinstance(answers, dict) and isinstance(answers.get("text"), list)
          and isinstance(answers.get("answer_start"), list) and len(answers["text"]) == len(answers["answer_start"]))
    if not ok:
        raise DataError(f"dataset.columns.answers: row {row} of the {split_name} split must be "
                        f'{{"text": [...], "answer_start": [...]}} with one start per text, got {answers!r:.200}',
                        field="dataset.columns.answers")
    return list(zip(answers["text"], answers["answer_start"])) or [("", -1)]


def clip_questions(tokenizer: Any, questions: list[str], budget: int) -> list[str]:
    """Each question cut after its ``budget``-th token."""
    offsets = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [q if len(o) <= budget else q[:o[budget - 1][1]] for q, o in zip(questions, offsets)]


def context_window(sequence_ids: list[int | None]) -> tuple[int, int]:
    """First and last token index of the context (the second sequence) in one window."""
    context = [i for i, s in enumerate(sequence_ids) if s == 1]
    return context[0], context[-1]


def answer_tokens(answer: tuple[str, int], offsets: list[tuple[int, int]], window: tuple[int, int]) -> tuple[int, int]:
    """Start and end token of the answer in this window; NO_ANSWER twice when the window does not hold it."""
    text, start_char = answer
    end_char = start_char + len(text)
    first, last = window
    if not text or start_char < offsets[first][0] or end_char > offsets[last][1]:
        return NO_ANSWER, NO_ANSWER
    start = first
    while start <= last and offsets[start][1] <= start_char:  # skip tokens that end before the answer starts
        start += 1
    end = last
    while end >= first and offsets[end][0] >= end_char:  # skip tokens that start after the answer ends
        end -= 1
    return start, end


def predict_answers(features: Any, scores: list[tuple[np.ndarray, np.ndarray]], contexts: list[str],
                    unanswerable: bool) -> list[str]:
    """The best answer text per example: the highest start+end logit over valid spans (inside a window's context,
    end not before start, at most MAX_ANSWER_TOKENS) across all windows of the example. With unanswerable
    training data, "" wins when the no-answer score (NO_ANSWER start+end, at its lowest over the windows) beats it."""
    columns = features.select_columns(["example_index", "offset_mapping", "context_start", "context_end"]).to_dict()
    by_example: dict[int, list[int]] = defaultdict(list)
    for i, example in enumerate(columns["example_index"]):
        by_example[example].append(i)
    offsets, starts, ends = columns["offset_mapping"], columns["context_start"], columns["context_end"]
    predictions = []
    for example, context in enumerate(contexts):
        best_text, best_score, null_score = "", -np.inf, np.inf
        for i in by_example.get(example, []):
            start_logits, end_logits = scores[i]
            null_score = min(null_score, start_logits[NO_ANSWER] + end_logits[NO_ANSWER])
            for s in np.argsort(start_logits)[::-1][:N_BEST]:
                for e in np.argsort(end_logits)[::-1][:N_BEST]:
                    valid = starts[i] <= s <= e <= ends[i] and e - s < MAX_ANSWER_TOKENS
                    if valid and start_logits[s] + end_logits[e] > best_score:
                        best_score = start_logits[s] + end_logits[e]
                        best_text = context[offsets[i][s][0]:offsets[i][e][1]].strip()
        predictions.append("" if unanswerable and null_score > best_score else best_text)
    return predictions


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)
