"""Sequence to sequence (translation, summarisation) with encoder-decoder models such as T5 and BART.

Rows hold a source text (``dataset.columns.prompt``, default ``source``) and a target text
(``dataset.columns.target``, default ``target``), each cut to ``maxLength`` tokens. Evaluation reports the loss and
scores greedy generations (batched, up to ``maxLength`` new tokens) against the untokenized targets with
sacrebleu's corpus BLEU and chrF (0-100), and ROUGE-L (0-1) when ``rouge_score`` is installed. chrF leads: it moves
smoothly from the first steps on, where BLEU sits at zero, so early stopping on it is meaningful.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from finetune_trainer.config import DatasetSpec, Task
from finetune_trainer.tasks.base import PreparedData, RawSplits, TaskAdapter, pad_multiple, register
from finetune_trainer.tasks.columns import by_role, model_inputs, resolve_columns, texts, tokenize_splits
from finetune_trainer.tasks.evaluation import RunningMean, eval_batches, length_order

IGNORE = -100  # label id the loss skips (padding of the targets)


@register
class Seq2SeqTask(TaskAdapter):
    task = Task.SEQ2SEQ
    auto_model = "AutoModelForSeq2SeqLM"
    higher_is_better = {"eval_loss": False, "eval_bleu": True, "eval_chrf": True, "eval_rougeL": True}

    max_new_tokens = 0  # generation budget at evaluation, dataset.maxLength; set by prepare

    def prepare(self, raw: RawSplits, tokenizer: Any, dataset: DatasetSpec) -> PreparedData:
        columns = resolve_columns(raw, dataset, {"prompt": "source", "target": "target"})
        self.max_new_tokens = dataset.max_length

        def encode(batch: dict[str, list], indices: list[int], split_name: str) -> dict[str, list]:
            sources, targets = (texts(batch, columns, role, indices, split_name) for role in ("prompt", "target"))
            encoded = tokenizer(sources, text_target=targets, truncation=True, max_length=dataset.max_length)
            encoded["length"] = [len(s) + len(t) for s, t in zip(encoded["input_ids"], encoded["labels"])]
            return encoded

        train, eval_ = tokenize_splits(raw, encode)
        if eval_ is None:
            return PreparedData(train=train, eval=None)
        # Generations are scored against the targets as written, not as the tokenizer round-trips them; features
        # and references share one order, by length, so generation batches stay even.
        order = length_order(eval_)
        return PreparedData(train=train, eval=eval_.select(order),
                            eval_examples=by_role(raw.eval.select(order), columns, "target"))

    def collate(self, tokenizer: Any, features: list[dict[str, Any]]) -> dict[str, Any]:
        from transformers import DataCollatorForSeq2Seq

        # Without the model the collator leaves decoder_input_ids out; T5 and BART derive them from the labels.
        rows = model_inputs(tokenizer, features, "labels")
        collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE, return_tensors="pt",
                                          pad_to_multiple_of=pad_multiple(tokenizer, rows))
        return collator(rows)

    def evaluate(self, model: Any, data: PreparedData, tokenizer: Any, batch_size: int, device: Any) -> dict[str, float]:
        loss, predictions = RunningMean(), []
        generator = getattr(model, "module", model)  # a DDP wrapper has no generate; generating needs no sync
        for _, batch, outputs in eval_batches(model, data.eval, batch_size, partial(self.collate, tokenizer), device):
            loss.add(outputs.loss, int((batch["labels"] != IGNORE).sum()))
            generated = generator.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                           max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1)
            predictions += [text.strip() for text in tokenizer.batch_decode(generated, skip_special_tokens=True)]
        return {"eval_loss": loss.mean, **text_scores(predictions, list(data.eval_examples["target"]))}


def text_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    import sacrebleu

    scores = {
        "eval_bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
        "eval_chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
    }
    try:
        from rouge_score import rouge_scorer
    except ImportError:  # optional: summarisation users install it, the image does not need it
        return scores
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    return {**scores, "eval_rougeL": sum(rouge) / len(rouge)}
