"""Causal LM: which tokens the loss covers for text, instruction and chat records (with and without a chat
template), padding-free packing that keeps examples apart, data errors, and a few real training steps."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset
from finetune_trainer.config import DatasetSpec
from finetune_trainer.errors import DataError
from finetune_trainer.tasks.base import RawSplits, get_task
from tiny_models import (
    chat_rows,
    instruction_rows,
    one_torch_thread,  # noqa: F401  (a fixture, used by pytestmark)
    run_tiny_job,
    tiny_model,
    tiny_tokenizer,
    train_steps,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def prepare(rows, eval_rows=None, arch="gpt2", max_length=128, packing=True, tokenizer=None, **spec):
    task = get_task("causal-lm")
    task.packing = packing
    tokenizer = tokenizer or tiny_tokenizer(arch)
    raw = RawSplits(Dataset.from_list(rows), Dataset.from_list(eval_rows) if eval_rows else None)
    return task, tokenizer, task.prepare(raw, tokenizer, DatasetSpec(source="unused", maxLength=max_length, **spec))


def learned_text(tokenizer, feature):
    """The text of the tokens the loss covers."""
    return tokenizer.decode([i for i, label in zip(feature["input_ids"], feature["labels"]) if label != -100])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])  # without and with a BOS token
def test_instruction_loss_covers_only_the_response(arch):
    row = instruction_rows(1)[0]
    _, tokenizer, data = prepare([row], arch=arch)
    feature = data.train[0]

    assert learned_text(tokenizer, feature) == row["response"] + tokenizer.eos_token
    prompt_tokens = feature["labels"].index(next(label for label in feature["labels"] if label != -100))
    assert row["prompt"] in tokenizer.decode(feature["input_ids"][:prompt_tokens])
    assert data.info["records"] == "instruction"


def test_chat_without_a_template_learns_each_assistant_turn_and_its_end():
    row = chat_rows(1)[0]
    _, tokenizer, data = prepare([row], max_length=512)
    replies = [m["content"] + tokenizer.eos_token for m in row["messages"] if m["role"] == "assistant"]

    assert learned_text(tokenizer, data.train[0]) == "".join(replies)
    assert "### user:\n" in tokenizer.decode(data.train[0]["input_ids"])


def test_chat_template_renders_the_conversation_and_learns_the_assistant_turns():
    tokenizer = tiny_tokenizer("qwen2")
    tokenizer.chat_template = CHATML
    row = chat_rows(1)[0]
    _, _, data = prepare([row], tokenizer=tokenizer, max_length=512)
    replies = [m["content"] + "<|im_end|>\n" for m in row["messages"] if m["role"] == "assistant"]

    rendered = tokenizer.apply_chat_template(row["messages"], tokenize=False)
    assert tokenizer.decode(data.train[0]["input_ids"]) == rendered
    assert learned_text(tokenizer, data.train[0]) == "".join(replies)


def test_plain_text_learns_every_token_and_long_texts_become_several_rows():
    text = " ".join(f"{r['prompt']} {r['response']}" for r in instruction_rows(8))
    _, tokenizer, data = prepare([{"text": text}], max_length=32)
    rows = data.train.to_list()

    assert len(rows) > 3 and all(r["length"] == len(r["input_ids"]) <= 32 for r in rows)
    assert all(r["labels"][0] == -100 and r["labels"][1:] == r["input_ids"][1:] for r in rows)
    assert tokenizer.decode(sum((r["input_ids"] for r in rows), [])) == text + tokenizer.eos_token


def test_packing_fills_rows_with_restarting_positions_and_no_padding():
    task, tokenizer = get_task("causal-lm"), tiny_tokenizer("gpt2")
    task.row_tokens = 8  # dataset.maxLength, which prepare would set
    features = [{"input_ids": list(range(10 * n, 11 * n)), "labels": [-100] + list(range(10 * n + 1, 11 * n)),
                 "length": n} for n in (5, 3, 4, 4)]

    batch = task.collate(tokenizer, features)

    assert set(batch) == {"input_ids", "labels", "position_ids"}  # no attention mask: positions separate examples
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 0, 1, 2, 3]]
    assert batch["input_ids"].tolist() == [list(range(50, 55)) + list(range(30, 33)),
                                           list(range(40, 44)) + list(range(40, 44))]
    assert (batch["labels"] == -100).sum() == len(features)  # each example's first token only: no padding


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_packed_rows_give_the_same_loss_as_one_example_per_row(arch):
    task, tokenizer, data = prepare(instruction_rows(12), arch=arch)
    features = data.train.to_list()
    model = tiny_model(arch, task.auto_model, **data.model_kwargs).eval()
    packed = task.collate(tokenizer, features)
    task.packing = False
    padded = task.collate(tokenizer, features)

    assert data.model_kwargs == {"use_cache": False}  # a KV cache would switch packed-sequence masking off
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0] == len(features)
    assert set(padded) == {"input_ids", "labels", "attention_mask"}
    with torch.no_grad():  # same targets; equal losses mean no token attended across examples
        assert model(**packed).loss.item() == pytest.approx(model(**padded).loss.item(), rel=1e-5)


def test_missing_columns_list_what_causal_lm_can_read():
    with pytest.raises(DataError) as error:
        prepare([{"body": "hello"}])
    assert error.value.field == "dataset.columns.text"
    assert "columns present: body" in str(error.value) and ".messages" in str(error.value)
    with pytest.raises(DataError) as error:
        prepare([{"question": "a", "response": "b"}], columns={"prompt": "question", "response": "answer"})
    assert error.value.field == "dataset.columns.response"


def test_malformed_chat_records_are_data_errors():
    with pytest.raises(DataError, match="row 0 of the train split") as error:
        prepare([{"messages": [{"role": "user"}]}])
    assert error.value.field == "dataset.columns.messages"


def test_a_prompt_that_fills_max_length_teaches_nothing_and_is_refused():
    with pytest.raises(DataError) as error:
        prepare([{"prompt": "why " * 200, "response": "because ."}], max_length=16)
    assert error.value.field == "dataset.maxLength"


def test_trains_and_reports_perplexity():
    task, tokenizer, data = prepare(instruction_rows(32), instruction_rows(8, seed=1))
    model = tiny_model("gpt2", task.auto_model, **data.model_kwargs)
    features = data.train.to_list()
    batches = [task.collate(tokenizer, features[s:s + 8]) for s in range(0, 32, 8)]
    before = task.evaluate(model, data, tokenizer, 4, "cpu")

    losses = train_steps(model, batches, steps=30)
    after = task.evaluate(model, data, tokenizer, 4, "cpu")

    assert losses[-1] < losses[0] / 2
    assert set(after) == {"eval_loss", "eval_perplexity"} == set(task.higher_is_better)
    assert after["eval_perplexity"] == pytest.approx(math.exp(after["eval_loss"]), rel=1e-5)
    assert after["eval_perplexity"] < before["eval_perplexity"] / 10


def test_runs_end_to_end_and_reports_perplexity(tmp_path):
    summary = run_tiny_job(tmp_path, "causal-lm", "llama", instruction_rows(32), instruction_rows(8, seed=1))

    assert summary["phase"] == "Succeeded"
    metrics = summary["metrics"]
    assert metrics["evalPerplexity"] == pytest.approx(math.exp(metrics["evalLoss"]), rel=1e-4)
