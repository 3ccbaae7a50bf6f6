"""Causal language modelling on plain text, instruction records or chat records; the loss covers only what the
model should learn to write.

The record kind follows the columns mapped under ``dataset.columns`` (else the columns present, in this order):
- chat: ``messages`` (default ``messages``), a list of ``{"role", "content"}``; loss on the assistant turns.
- instruction: ``prompt`` + ``response`` (defaults ``prompt``/``response``), a two-turn chat; loss on the response.
- text: ``text`` (default ``text``); loss on every token; a text longer than ``maxLength`` becomes several rows.
Conversations use the tokenizer's chat template when it has one, else ``### role:\\n content`` blocks with the end
of sequence token closing each assistant turn.

Packing (``training.packing``, on by default): each batch's examples are first-fit packed into rows of at most
``maxLength`` tokens, with ``position_ids`` restarting at every example and no attention mask. transformers (5.x)
turns restarting position ids into a block-diagonal causal mask for the sdpa and eager attention on any device,
and into variable-length kernels for flash attention, so no token attends across examples; padding is left only
at the end of the shorter rows, where it forms a segment of its own. Rows stay bounded by ``maxLength`` instead of
one row per batch, because sdpa materialises the mask and would pay attention over the whole batch's tokens
squared. The model must run without a KV cache for this (a cache turns the packed-sequence detection off), so
packing loads it with ``use_cache=False``. Without packing, rows are padded on the right with an attention mask.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from finetune_trainer.batching import TokenBudget, pack, within_budget
from finetune_trainer.config import DatasetSpec, Task, TrainingSpec
from finetune_trainer.errors import DataError
from finetune_trainer.tasks.base import PreparedData, RawSplits, TaskAdapter, register
from finetune_trainer.tasks.columns import missing_column, resolve_columns, splits, texts, tokenize_splits
from finetune_trainer.tasks.evaluation import RunningMean, eval_batches

IGNORE = -100  # label of tokens the loss skips: prompts, other roles' turns, padding
Piece = tuple[str, bool]  # a stretch of text and whether the model learns to write it


@register
class CausalLMTask(TaskAdapter):
    task = Task.CAUSAL_LM
    auto_model = "AutoModelForCausalLM"
    higher_is_better = {"eval_loss": False, "eval_perplexity": False}

    packing = True  # training.packing (configure); set before prepare, as it decides the model's use_cache
    row_tokens = 0  # packed row capacity, dataset.maxLength; set by prepare

    def configure(self, training: TrainingSpec) -> None:
        self.packing = training.packing
        if training.batch_tokens is not None:
            self.budget = TokenBudget(training.batch_tokens, self.batch_cells)

    def prepare(self, raw: RawSplits, tokenizer: Any, dataset: DatasetSpec) -> PreparedData:
        kind, columns = record_kind(raw, dataset)
        self.row_tokens = dataset.max_length
        bos = [tokenizer.bos_token_id] if adds_bos(tokenizer) else []
        eos = tokenizer.eos_token or ""

        def encode(batch: dict[str, list], indices: list[int], split_name: str) -> dict[str, list]:
            rows: dict[str, list] = {"input_ids": [], "labels": [], "length": []}
            for record, row in zip(records(batch, kind, columns, indices, split_name), indices):
                if kind == "text":
                    pieces, prefix = [(record + eos, True)], bos
                elif tokenizer.chat_template:
                    pieces, prefix = template_pieces(tokenizer, record, f"row {row} of the {split_name} split"), []
                else:
                    pieces, prefix = plain_pieces(record, eos), bos
                ids, labels = tokenize_pieces(tokenizer, pieces, prefix)
                # Long texts are cut into several rows; a conversation keeps its start (the prompt it answers).
                cuts = range(0, len(ids), dataset.max_length) if kind == "text" else [0]
                for cut in cuts:
                    chunk_ids, chunk_labels = ids[cut:cut + dataset.max_length], labels[cut:cut + dataset.max_length]
                    # A row's first token has no context to be predicted from; making that explicit also keeps a
                    # packed row from predicting it from the previous example's last token.
                    chunk_labels = [IGNORE] + chunk_labels[1:]
                    if any(label != IGNORE for label in chunk_labels):  # a prompt filling maxLength teaches nothing
                        rows["input_ids"].append(chunk_ids)
                        rows["labels"].append(chunk_labels)
                        rows["length"].append(len(chunk_ids))
            return rows

        train, eval_ = tokenize_splits(raw, encode)
        for split_name, split in (("train", train), ("eval", eval_)):
            if split is not None and len(split) == 0:
                raise DataError(f"dataset.maxLength: no {split_name} example keeps a response token within "
                                f"{dataset.max_length} tokens; raise maxLength or shorten the prompts",
                                field="dataset.maxLength")
        return PreparedData(train=train, eval=eval_, model_kwargs={"use_cache": False} if self.packing else {},
                            info={"records": kind, "packing": self.packing})

    def collate(self, tokenizer: Any, features: list[dict[str, Any]]) -> dict[str, Any]:
        rows = self._rows([len(f["input_ids"]) for f in features])
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # never attended nor scored
        return batch_rows([[features[k] for k in row] for row in rows], pad_id, packed=self.packing)

    def _rows(self, lengths: list[int]) -> list[list[int]]:
        """Which examples share each row: packed into rows of maxLength, or one row each."""
        if not self.packing:
            return [[k] for k in range(len(lengths))]
        return pack(lengths, max(self.row_tokens, max(lengths)))

    def batch_cells(self, lengths: list[int]) -> int:
        """Tensor cells (rows x width) a batch of examples of these lengths collates into: what batchTokens bounds,
        in training and evaluation."""
        rows = self._rows(lengths)
        return len(rows) * max(sum(lengths[k] for k in row) for row in rows)

    def loss_units(self, batch: dict[str, Any]) -> int:
        # The tokens the model's mean loss is over: labels shifted by one, the ignored ones left out.
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    def evaluate(self, model: Any, data: PreparedData, tokenizer: Any, batch_size: int, device: Any) -> dict[str, float]:
        loss = RunningMean()
        batches = None
        if self.budget is not None:  # evaluation keeps to batchTokens too
            batches = within_budget(list(range(len(data.eval))), list(data.eval["length"]), batch_size, self.budget)
        collate = partial(self.collate, tokenizer)
        for _, batch, outputs in eval_batches(model, data.eval, batch_size, collate, device, batches):
            # Every row's first label is IGNORE, so the labelled tokens are exactly the shifted targets.
            loss.add(outputs.loss, int((batch["labels"] != IGNORE).sum()))
        return {"eval_loss": loss.mean, "eval_perplexity": torch.tensor(loss.mean).exp().item()}


def record_kind(raw: RawSplits, dataset: DatasetSpec) -> tuple[str, dict[str, str]]:
    """Which kind of records the data holds, and the column of each role: what is mapped decides, else what the
    train split has."""
    mapped, present = dataset.columns, set(raw.train.column_names)
    if mapped.text and len(mapped.text) > 1:
        raise DataError("dataset.columns.text: causal-lm takes a single text column", field="dataset.columns.text")
    if mapped.messages or (not (mapped.prompt or mapped.response or mapped.text) and "messages" in present):
        return "chat", resolve_columns(raw, dataset, {"messages": "messages"})
    if mapped.prompt or mapped.response or (not mapped.text and {"prompt", "response"} <= present):
        return "instruction", resolve_columns(raw, dataset, {"prompt": "prompt", "response": "response"})
    column = mapped.text[0] if mapped.text else "text"
    for split_name, split in splits(raw):
        if column not in split.column_names:
            raise missing_column("text", column, split_name, split.column_names,
                                 hint="causal-lm reads a text column, prompt and response columns, or a messages "
                                      "column (dataset.columns.text, .prompt and .response, .messages)")
    return "text", {"text": column}


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer starts a sequence with BOS (Llama) or not (GPT-2, Qwen)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def records(batch: dict[str, list], kind: str, columns: dict[str, str], indices: list[int],
            split_name: str) -> list[Any]:
    """The batch's records, checked: texts for text records, else conversations (lists of role/content)."""
    if kind == "text":
        return texts(batch, columns, "text", indices, split_name)
    if kind == "instruction":
        prompts, responses = (texts(batch, columns, role, indices, split_name) for role in ("prompt", "response"))
        return [[{"role": "user", "content": p}, {"role": "assistant", "content": r}]
                for p, r in zip(prompts, responses)]
    conversations = batch[columns["messages"]]
    for messages, row in zip(conversations, indices):
        well_formed = isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages)
        if not well_formed:
            raise DataError(f"dataset.columns.messages: row {row} of the {split_name} split must be a list of "
                            f"{{role, content}} strings, got {messages!r:.200}", field="dataset.columns.messages")
    return conversations


def plain_pieces(messages: list[dict[str, str]], eos: str) -> list[Piece]:
    """``### role:\\n content`` blocks; the model learns each assistant turn's content and where it ends."""
    pieces: list[Piece] = []
    for k, message in enumerate(messages):
        separator = "\n\n" if k else ""
        header = f"{separator}### {message['role']}:\n"
        if message["role"] == "assistant":
            pieces += [(header, False), (message["content"] + eos, True)]
        else:
            pieces.append((header + message["content"], False))
    return pieces


def template_pieces(tokenizer: Any, messages: list[dict[str, str]], where: str) -> list[Piece]:
    """The chat template's rendering cut at turn boundaries: each assistant turn is what the template adds after
    the generation prompt that precedes it (content and end-of-turn marker), learned; the rest is not."""
    render = partial(tokenizer.apply_chat_template, tokenize=False)
    pieces: list[Piece] = []
    done = ""
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, after = render(messages[:k], add_generation_prompt=True), render(messages[:k + 1])
        if not (before.startswith(done) and after.startswith(before)):
            raise DataError(f"dataset.columns.messages: {where}: the tokenizer's chat template renders earlier "
                            f"turns differently once later ones follow, so the assistant turns cannot be located "
                            f"for the loss", field="dataset.columns.messages")
        pieces += [(before[len(done):], False), (after[len(before):], True)]
        done = after
    pieces.append((render(messages)[len(done):], False))
    return pieces


def tokenize_pieces(tokenizer: Any, pieces: list[Piece], prefix: list[int]) -> tuple[list[int], list[int]]:
    """Token ids and labels; each piece is tokenized on its own so the learned stretches are exact."""
    ids, labels = list(prefix), [IGNORE] * len(prefix)
    for text, learned in pieces:
        piece_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece_ids
        labels += piece_ids if learned else [IGNORE] * len(piece_ids)
    return ids, labels


def batch_rows(rows: list[list[dict[str, Any]]], pad_id: int, packed: bool) -> dict[str, torch.Tensor]:
    """Tensors for rows of one or more examples, right-padded to the longest row. Packed rows carry position ids
    that restart per example (the padding tail restarts too, so it is a segment nothing else attends to);
    unpacked rows carry an attention mask instead."""
    width = max(sum(len(f["input_ids"]) for f in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        end = 0
        for feature in row:
            start, end = end, end + len(feature["input_ids"])
            input_ids[r, start:end] = torch.tensor(feature["input_ids"])
            labels[r, start:end] = torch.tensor(feature["labels"])
            position_ids[r, start:end] = torch.arange(end - start)
        position_ids[r, end:] = torch.arange(width - end)
        attention_mask[r, :end] = 1
    if packed:
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
