"""Extractive question answering: windows over long contexts, answer positions, span selection from crafted
logits, SQuAD scoring, data errors, and a few real training steps on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset
from finetune_trainer.config import DatasetSpec
from finetune_trainer.errors import DataError
from finetune_trainer.tasks.base import RawSplits, get_task
from finetune_trainer.tasks.question_answering import exact_match, predict_answers, token_f1
from tiny_models import (
    one_torch_thread,  # noqa: F401  (a fixture, used by pytestmark)
    qa_rows,
    run_tiny_job,
    tiny_model,
    tiny_tokenizer,
    train_steps,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def prepare(rows, eval_rows=None, max_length=48, arch="bert", **spec):
    task, tokenizer = get_task("question-answering"), tiny_tokenizer(arch)
    raw = RawSplits(Dataset.from_list(rows), Dataset.from_list(eval_rows) if eval_rows else None)
    return task, tokenizer, task.prepare(raw, tokenizer, DatasetSpec(source="unused", maxLength=max_length, **spec))


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_a_long_context_becomes_overlapping_windows_that_locate_the_answer(arch):
    row = qa_rows(1, seed=3, filler=10)[0]
    _, tokenizer, data = prepare([row], [row], arch=arch)
    windows = data.eval.to_list()

    assert len(windows) >= 3 and all(w["example_index"] == 0 for w in windows)
    assert all(len(w["input_ids"]) <= 48 for w in windows)
    for left, right in zip(windows, windows[1:]):  # consecutive windows share `stride` tokens of context
        left_end = left["offset_mapping"][left["context_end"]][1]
        right_start = right["offset_mapping"][right["context_start"]][0]
        assert right_start < left_end
    holding = [w for w in windows if w["start_positions"] != 0]
    assert holding, "some window holds the answer"
    for w in holding:
        span = tokenizer.decode(w["input_ids"][w["start_positions"]:w["end_positions"] + 1]).strip()
        assert span.lower() == row["answers"]["text"][0].lower()
    assert all(w["end_positions"] == 0 for w in windows if w not in holding)  # the rest point at CLS
    assert data.info["stride"] == 12 and "offset_mapping" not in data.train.column_names


def crafted_scores(windows, answer_window, decoy_window):
    """Logits with a strong span on the answer, a weaker valid one in another window, and stronger traps that no
    valid span can use: question tokens, and a start after an end."""
    scores = []
    for i, w in enumerate(windows):
        start, end = np.zeros(w["length"]), np.zeros(w["length"])
        first, last = w["context_start"], w["context_end"]
        start[first - 1] = end[first - 1] = 50.0  # outside the context
        if i == decoy_window:
            start[last], end[last] = 40.0, -100.0  # the only valid span from `last` is (last, last)
            start[first], end[first] = -100.0, 40.0  # the only valid span to `first` is (first, first)
            start[first + 1], end[first + 2] = 5.0, 5.0
        if i == answer_window:
            start[w["start_positions"]], end[w["end_positions"]] = 9.0, 9.0
        scores.append((start, end))
    return scores


def test_postprocessing_picks_the_best_valid_span_across_windows():
    row = qa_rows(1, seed=3, filler=10)[0]
    _, _, data = prepare([row], [row])
    windows = data.eval.to_list()
    answer_window = next(i for i, w in enumerate(windows) if w["start_positions"] != 0)
    scores = crafted_scores(windows, answer_window, decoy_window=(answer_window + 1) % len(windows))

    [prediction] = predict_answers(data.eval, scores, [row["context"]], unanswerable=False)

    assert prediction == row["answers"]["text"][0]


def test_unanswerable_training_data_lets_no_answer_win():
    answerable, unanswerable = qa_rows(2, seed=4)
    unanswerable["answers"] = {"text": [], "answer_start": []}
    _, _, data = prepare([answerable, unanswerable], [unanswerable])
    [window] = data.eval.to_list()
    start, end = np.zeros(window["length"]), np.zeros(window["length"])
    start[0] = end[0] = 3.0  # the no-answer position
    start[window["context_start"]] = end[window["context_start"]] = 1.0

    assert data.info["unanswerable"] and window["start_positions"] == 0
    assert predict_answers(data.eval, [(start, end)], [unanswerable["context"]], unanswerable=True) == [""]
    assert predict_answers(data.eval, [(start, end)], [unanswerable["context"]], unanswerable=False) != [""]


def test_squad_scoring_normalises_case_punctuation_and_articles():
    assert exact_match("The  New York!", "new york") == 1.0
    assert exact_match("in New York", "New York") == 0.0
    assert token_f1("in New York", "New York") == pytest.approx(0.8)
    assert token_f1("", "") == 1.0 and token_f1("Paris", "") == 0.0


def test_a_long_question_is_cut_to_leave_room_for_the_context():
    row = qa_rows(1)[0]
    row["question"] = " ".join(["why"] * 100) + " ?"
    _, _, data = prepare([row], max_length=32)
    assert all(len(ids) <= 32 for ids in data.train["input_ids"])


def test_answers_must_be_squad_shaped():
    row = qa_rows(1)[0]
    row["answers"] = "Paris"
    with pytest.raises(DataError, match="row 0 of the train split") as error:
        prepare([row])
    assert error.value.field == "dataset.columns.answers"


def test_missing_column_names_the_field_and_the_columns_present():
    rows = [{"query": r["question"], "context": r["context"], "answers": r["answers"]} for r in qa_rows(2)]
    with pytest.raises(DataError) as error:
        prepare(rows)
    assert error.value.field == "dataset.columns.question"
    assert "query, context, answers" in str(error.value)
    _, _, data = prepare(rows, max_length=128, columns={"question": "query"})  # mapped, it works
    assert len(data.train) == 2


def test_trains_and_reports_exact_match_and_f1():
    task, tokenizer, data = prepare(qa_rows(32), qa_rows(8, seed=1), max_length=64)
    model = tiny_model("bert", task.auto_model)
    batches = [task.collate(tokenizer, data.train.select(range(s, s + 8)).to_list()) for s in range(0, 32, 8)]

    losses = train_steps(model, batches, steps=40)
    metrics = task.evaluate(model, data, tokenizer, 8, "cpu")

    assert set(batches[0]) == {"input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions"}
    assert losses[-1] < losses[0]
    assert set(metrics) == {"eval_loss", "eval_exact_match", "eval_f1"} == set(task.higher_is_better)
    assert 0.0 <= metrics["eval_exact_match"] <= metrics["eval_f1"] <= 1.0


def test_runs_end_to_end_and_reports_exact_match_and_f1(tmp_path):
    summary = run_tiny_job(tmp_path, "question-answering", "bert", qa_rows(32, filler=4), qa_rows(8, seed=1, filler=4))

    assert summary["phase"] == "Succeeded"
    assert 0.0 <= summary["metrics"]["evalExactMatch"] <= summary["metrics"]["evalF1"] <= 1.0
    assert "evalLoss" in summary["metrics"]
