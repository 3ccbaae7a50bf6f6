"""Data loading: every format, GLUE's quirks, split discovery, held-out eval, and errors that name the field."""

from __future__ import annotations

import json

import pytest
from finetune_trainer.config import DatasetSpec
from finetune_trainer.data import load_raw
from finetune_trainer.errors import DataError
from tiny_models import sentiment_rows, write_rows

ROWS = sentiment_rows(20)


def spec(source, **fields) -> DatasetSpec:
    return DatasetSpec.model_validate({"source": str(source), **fields})


@pytest.mark.parametrize("ext", ["csv", "tsv", "json", "jsonl", "parquet"])
def test_each_format_loads_from_a_directory_of_split_files(tmp_path, ext):
    write_rows(ROWS, tmp_path / f"train.{ext}")
    write_rows(ROWS[:5], tmp_path / f"validation.{ext}")

    raw = load_raw(spec(tmp_path), seed=1)

    assert len(raw.train) == 20 and len(raw.eval) == 5
    assert raw.train[0]["text"] == ROWS[0]["text"]
    assert str(raw.train[0]["label"]) == str(ROWS[0]["label"])


def test_glue_tsv_with_byte_order_mark_and_bare_quotes(tmp_path):
    lines = ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String",
             '1\t1\t2\tHe said "hi" to "the witness".\tHe said "hi.',
             "0\t3\t4\tA 'single' quote\tAnother line"]
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "dev.tsv").write_text("\n".join(lines[:2]) + "\n", encoding="utf-8")

    raw = load_raw(spec(tmp_path), seed=1)

    assert raw.train.column_names == ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    assert raw.train[0]["#1 String"] == 'He said "hi" to "the witness".'
    assert raw.train[0]["#2 String"] == 'He said "hi.'
    assert len(raw.eval) == 1  # dev.tsv is the eval split


def test_json_object_holding_one_list_of_records(tmp_path):
    (tmp_path / "squad.json").write_text(json.dumps({"version": "1", "data": ROWS}))
    raw = load_raw(spec(tmp_path / "squad.json", evalFraction=0.25), seed=0)
    assert len(raw.train) == 15 and len(raw.eval) == 5


def test_saved_datasets_directory(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(ROWS), "test": Dataset.from_list(ROWS[:3])}).save_to_disk(tmp_path / "ds")
    raw = load_raw(spec(tmp_path / "ds"), seed=0)
    assert len(raw.train) == 20 and len(raw.eval) == 3  # "test" serves as eval when nothing better exists


def test_single_file_holds_out_a_seeded_tenth(tmp_path):
    write_rows(sentiment_rows(50), tmp_path / "all.csv")
    first = load_raw(spec(tmp_path / "all.csv"), seed=7)
    again = load_raw(spec(tmp_path / "all.csv"), seed=7)
    assert len(first.train) == 45 and len(first.eval) == 5
    assert first.eval["text"] == again.eval["text"]


def test_named_splits_and_pvc_sources(tmp_path, monkeypatch):
    claim = tmp_path / "pvc" / "datasets" / "sent"
    write_rows(ROWS, claim / "fit.jsonl")
    write_rows(ROWS[:4], claim / "holdout.jsonl")
    write_rows(ROWS[:2], claim / "validation.jsonl")
    monkeypatch.setenv("FINETUNE_PVC_ROOT", str(tmp_path / "pvc"))

    raw = load_raw(spec("pvc://datasets/sent", train="fit", eval="holdout"), seed=0)

    assert len(raw.train) == 20 and len(raw.eval) == 4


@pytest.mark.parametrize(("fields", "field", "words"), [
    ({"train": "nope"}, "dataset.train", "has ['train', 'train.csv', 'validation', 'validation.csv']"),
    ({"eval": "holdout"}, "dataset.eval", "not in"),
])
def test_missing_splits_name_the_field(tmp_path, fields, field, words):
    write_rows(ROWS, tmp_path / "train.csv")
    write_rows(ROWS, tmp_path / "validation.csv")
    with pytest.raises(DataError) as info:
        load_raw(spec(tmp_path, **fields), seed=0)
    assert info.value.field == field and words in str(info.value)


def test_empty_split_and_missing_source_are_data_errors(tmp_path):
    write_rows(ROWS, tmp_path / "train.csv")
    (tmp_path / "validation.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="empty") as info:
        load_raw(spec(tmp_path), seed=0)
    assert info.value.field == "dataset.eval"
    with pytest.raises(DataError) as info:
        load_raw(spec(tmp_path / "absent"), seed=0)
    assert info.value.field == "dataset.source"


def test_ragged_csv_row_names_the_line(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\ngood,1\nbad,0,extra\n")
    with pytest.raises(DataError, match="line 3 has 3 fields"):
        load_raw(spec(tmp_path / "train.csv"), seed=0)


def test_hub_source_offline_says_what_to_do(monkeypatch):
    import datasets
    import huggingface_hub

    # HF_HUB_OFFLINE is read at import; set what it sets (this machine has no route to the Hub either way).
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as info:
        load_raw(spec("hf://glue?config=mrpc"), seed=0)
    assert info.value.field == "dataset.source" and "save_to_disk" in str(info.value)
