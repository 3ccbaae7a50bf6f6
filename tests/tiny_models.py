"""Tiny random models and small datasets for trainer tests: built from configs, no downloads, seconds on a CPU.

Models
    ``save_tiny_model(arch, auto_class, path, **config_overrides) -> Path`` builds a randomly initialised model of
    one architecture family (``ARCHS``: bert, roberta, distilbert, gpt2, llama, qwen2, t5, bart) with hidden size
    32, 2-4 blocks and 2 heads, instantiates it through the named transformers Auto class (e.g.
    ``"AutoModelForSequenceClassification"``, ``"AutoModelForCausalLM"``, ``"AutoModelForSeq2SeqLM"``,
    ``"AutoModelForTokenClassification"``, ``"AutoModelForQuestionAnswering"``) and saves it together with a
    tokenizer that works offline into ``path``; the directory is then a valid ``model.source``. Keyword arguments
    override the config (e.g. ``num_hidden_layers=6``). ``tiny_config(arch, **overrides)`` returns the config alone.

Tokenizers
    ``tiny_tokenizer(arch)`` trains a small tokenizer on ``CORPUS`` (deterministic, well under a second):
    WordPiece with [CLS]/[SEP] templates for bert/distilbert, byte-level BPE for roberta/gpt2/llama/qwen2/bart
    (with the special tokens and templates each family expects), and a BPE for t5 with pad id 0, eos id 1,
    unk id 2 as T5 models assume. Any text encodes (unknown words fall back to characters or bytes).

Data
    ``sentiment_rows(n, seed)`` / ``pair_rows(n, seed)`` make learnable single-sentence and sentence-pair
    classification rows; ``write_rows(rows, path)`` writes rows as csv, tsv, json (a list), jsonl or parquet by
    the file's extension; ``write_sentiment_csv(path, n)`` is the common case in one call.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

import pytest

ARCHS = ("bert", "roberta", "distilbert", "gpt2", "llama", "qwen2", "t5", "bart")

POSITIVE = ["good", "great", "excellent", "wonderful", "lovely", "amazing", "superb", "delightful", "brilliant", "fine"]
NEGATIVE = ["bad", "awful", "terrible", "horrible", "poor", "dreadful", "boring", "ugly", "sad", "weak"]
SUBJECTS = ["the movie", "this film", "the food", "our hotel", "the service", "that book", "the show", "my trip"]
FILLERS = ["really", "very", "quite", "truly", "so", "rather", "honestly", "simply"]
NAMES = ["Alice", "Bob", "Carol", "Dave", "Paris", "London", "Berlin", "Google", "Acme", "Monday"]

CORPUS = [
    f"{s} was {f} {w} ." for s in SUBJECTS for f in FILLERS[:3] for w in POSITIVE + NEGATIVE
] + [
    f"{a} met {b} in {c} on {d} ."
    for a, b, c, d in zip(NAMES, NAMES[3:] + NAMES[:3], NAMES[4:] + NAMES[:4], NAMES[::-1])
] + [
    "Question : what is the capital of France ? Answer : Paris .",
    "translate English to German : the house is small . das Haus ist klein .",
    "User : hello ! Assistant : hi , how can I help you today ?",
    "The quick brown fox jumps over the lazy dog 0123456789 .",
]

_LETTERS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"()-_/[]{}<>@#$%&*+=")


def tiny_config(arch: str, **overrides: Any):
    """A small config of one family: hidden 32, 2 heads, 4 blocks (2+2 for the seq2seq families)."""
    from transformers import (BartConfig, BertConfig, DistilBertConfig, GPT2Config, LlamaConfig, Qwen2Config,
                              RobertaConfig, T5Config)

    tok = tiny_tokenizer(arch)
    vocab = len(tok)
    ids = {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    decoder_only = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, **ids)
    families = {
        "bert": (BertConfig, dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=512, pad_token_id=tok.pad_token_id)),
        "roberta": (RobertaConfig, dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                        intermediate_size=64, max_position_embeddings=520, **ids)),
        "distilbert": (DistilBertConfig, dict(vocab_size=vocab, dim=32, n_layers=4, n_heads=2, hidden_dim=64,
                                              max_position_embeddings=512, pad_token_id=tok.pad_token_id)),
        "gpt2": (GPT2Config, dict(vocab_size=vocab, n_embd=32, n_layer=4, n_head=2, n_positions=512, **ids)),
        "llama": (LlamaConfig, decoder_only),
        "qwen2": (Qwen2Config, decoder_only),
        "t5": (T5Config, dict(vocab_size=vocab, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2,
                              num_heads=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)),
        "bart": (BartConfig, dict(vocab_size=vocab, d_model=32, encoder_layers=2, decoder_layers=2,
                                  encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                                  decoder_ffn_dim=64, max_position_embeddings=512,
                                  decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=tok.eos_token_id,
                                  **ids)),
    }
    if arch not in families:
        raise ValueError(f"unknown arch {arch!r}; one of {ARCHS}")
    config_class, kwargs = families[arch]
    if "num_labels" in overrides:
        # Named labels, because transformers does not save default LABEL_i names and BART's default is 3 labels.
        overrides["id2label"] = {i: f"class_{i}" for i in range(overrides.pop("num_labels"))}
    return config_class(**{**kwargs, **overrides})


def save_tiny_model(arch: str, auto_class: str, path: str | Path, **config_overrides: Any) -> Path:
    """Build a random ``arch`` model through ``transformers.<auto_class>`` and save it with its tokenizer."""
    import torch
    import transformers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config(arch, **config_overrides)
    torch.manual_seed(0)
    model = getattr(transformers, auto_class).from_config(cfg)
    model.save_pretrained(path)
    tiny_tokenizer(arch).save_pretrained(path)
    return path


def tiny_tokenizer(arch: str):
    """A tokenizer trained on ``CORPUS`` for ``arch`` (see the module docstring), as a PreTrainedTokenizerFast."""
    if arch in ("bert", "distilbert"):
        return _wordpiece_tokenizer()
    if arch == "t5":
        return _t5_tokenizer()
    if arch in ARCHS:
        return _byte_bpe_tokenizer(arch)
    raise ValueError(f"unknown arch {arch!r}; one of {ARCHS}")


def _wordpiece_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=[c.lower() for c in _LETTERS]))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_input_names=_input_names("bert"))


def _byte_bpe_tokenizer(arch: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    # One special-token layout per family, as their pretrained tokenizers have it.
    bos, eos, pad, unk = {
        "roberta": ("<s>", "</s>", "<pad>", "<unk>"),
        "bart": ("<s>", "</s>", "<pad>", "<unk>"),
        "gpt2": ("<|endoftext|>", "<|endoftext|>", "<|pad|>", "<|endoftext|>"),
        "llama": ("<s>", "</s>", "<pad>", "<unk>"),
        "qwen2": ("<|im_start|>", "<|endoftext|>", "<|pad|>", "<|endoftext|>"),
    }[arch]
    specials = list(dict.fromkeys([bos, pad, eos, unk] + (["<mask>"] if arch in ("roberta", "bart") else [])))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=500, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    b, e = tok.token_to_id(bos), tok.token_to_id(eos)
    if arch in ("roberta", "bart"):  # <s> A </s></s> B </s>
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B:1 {eos}:1",
            special_tokens=[(bos, b), (eos, e)])
    elif arch == "llama":  # <s> A (B): decoders add BOS only
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B:1", special_tokens=[(bos, b)])
    extra = {"mask_token": "<mask>", "cls_token": bos, "sep_token": eos} if arch in ("roberta", "bart") else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                   unk_token=unk, model_input_names=_input_names(arch), **extra)


def _t5_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2: what T5 configs assume
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=_LETTERS + ["▁"]))
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B:1 </s>:1", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                   model_input_names=_input_names("t5"))


def _input_names(arch: str) -> list[str]:
    # Only BERT-style models take token_type_ids; others must not receive them.
    return ["input_ids", "token_type_ids", "attention_mask"] if arch == "bert" else ["input_ids", "attention_mask"]


def sentiment_rows(n: int = 64, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` rows ``{"text", "label"}``: label 1 when the sentence uses a positive word, 0 for a negative one."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        word = rng.choice(POSITIVE if label else NEGATIVE)
        rows.append({"text": f"{rng.choice(SUBJECTS)} was {rng.choice(FILLERS)} {word} .", "label": label})
    rng.shuffle(rows)
    return rows


def pair_rows(n: int = 64, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` rows ``{"sentence1", "sentence2", "label"}``: label 1 when both sentences share their sentiment."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a_pos, same = rng.random() < 0.5, i % 2 == 1
        b_pos = a_pos if same else not a_pos
        s1 = f"{rng.choice(SUBJECTS)} was {rng.choice(POSITIVE if a_pos else NEGATIVE)} ."
        s2 = f"{rng.choice(SUBJECTS)} was {rng.choice(FILLERS)} {rng.choice(POSITIVE if b_pos else NEGATIVE)} ."
        rows.append({"sentence1": s1, "sentence2": s2, "label": int(same)})
    return rows


def write_rows(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write ``rows`` to ``path`` in the format its extension names: .csv, .tsv, .json, .jsonl or .parquet."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t" if suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        raise ValueError(f"write_rows: unsupported extension {suffix!r}")
    return path


def write_sentiment_csv(path: str | Path, n: int = 64, seed: int = 0) -> Path:
    """A learnable binary sentiment csv with columns text,label."""
    return write_rows(sentiment_rows(n, seed), path)


# --- Task data and a plain training loop (task adapter tests) ---------------------------------------------------

PEOPLE = ["Alice", "Bob", "Carol", "Dave"]
PLACES = [["Paris"], ["London"], ["Berlin"], ["New", "York"]]
COMPANIES = [["Google"], ["Acme", "Corp"]]
ANTONYMS = {"good": "bad", "big": "small", "old": "new", "happy": "sad", "hot": "cold", "fast": "slow"}
EN_DE = {"the house": "das Haus", "the dog": "der Hund", "the car": "das Auto", "the cat": "die Katze",
         "small": "klein", "big": "groß", "old": "alt", "new": "neu", "red": "rot", "fast": "schnell"}


def _entity(words: list[str], kind: str) -> list[tuple[str, str]]:
    return [(w, ("B-" if i == 0 else "I-") + kind) for i, w in enumerate(words)]


def ner_rows(n: int = 48, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` rows ``{"tokens", "ner_tags"}`` with IOB2 string tags for PER, LOC and ORG (multi-word ones too)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        per, other = rng.sample(PEOPLE, 2)
        place, company = rng.choice(PLACES), rng.choice(COMPANIES)
        o = lambda *ws: [(w, "O") for w in ws]  # noqa: E731
        pattern = [
            _entity([per], "PER") + o("met") + _entity([other], "PER") + o("in") + _entity(place, "LOC") + o("."),
            _entity([per], "PER") + o("works", "at") + _entity(company, "ORG") + o("in") + _entity(place, "LOC")
            + o("."),
            o("the", "office", "of") + _entity(company, "ORG") + o("is", "in") + _entity(place, "LOC") + o("."),
        ][i % 3]
        rows.append({"tokens": [w for w, _ in pattern], "ner_tags": [t for _, t in pattern]})
    return rows


def qa_rows(n: int = 32, seed: int = 0, filler: int = 0) -> list[dict[str, Any]]:
    """``n`` SQuAD-style rows ``{"question", "context", "answers"}``: the context says where each person lives
    (``filler`` extra sentences make it longer) and the question asks about one of them."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        homes = {person: " ".join(rng.choice(PLACES)) for person in rng.sample(PEOPLE, len(PEOPLE))}
        sentences = [f"{p} lives in {h} ." for p, h in homes.items()]
        sentences += [f"it was a {rng.choice(list(ANTONYMS))} day ." for _ in range(filler)]
        rng.shuffle(sentences)
        person = rng.choice(PEOPLE)
        fact = f"{person} lives in {homes[person]} ."
        context = " ".join(sentences)
        start = context.index(fact) + len(f"{person} lives in ")
        rows.append({"question": f"where does {person} live ?", "context": context,
                     "answers": {"text": [homes[person]], "answer_start": [start]}})
    return rows


def instruction_rows(n: int = 32, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` rows ``{"prompt", "response"}``: name the opposite of a word."""
    rng = random.Random(seed)
    words = list(ANTONYMS)
    return [{"prompt": f"what is the opposite of {w} ?", "response": f"the opposite of {w} is {ANTONYMS[w]} ."}
            for w in (rng.choice(words) for _ in range(n))]


def chat_rows(n: int = 16, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` rows ``{"messages"}``: a system line and two user/assistant exchanges about opposites."""
    rows = []
    for row in instruction_rows(2 * n, seed)[::2]:
        follow_up = "and say it again ?"
        rows.append({"messages": [
            {"role": "system", "content": "you answer in one short sentence ."},
            {"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]},
            {"role": "user", "content": follow_up}, {"role": "assistant", "content": row["response"]},
        ]})
    return rows


def translation_rows(n: int = 32, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` rows ``{"source", "target"}``: toy English to German (``the dog is big .`` -> ``der Hund ist groß .``)."""
    rng = random.Random(seed)
    nouns = [k for k in EN_DE if k.startswith("the ")]
    adjectives = [k for k in EN_DE if not k.startswith("the ")]
    rows = []
    for _ in range(n):
        noun, adjective = rng.choice(nouns), rng.choice(adjectives)
        rows.append({"source": f"{noun} is {adjective} .", "target": f"{EN_DE[noun]} ist {EN_DE[adjective]} ."})
    return rows


def tiny_model(arch: str, auto_class: str, **config_overrides: Any):
    """A randomly initialised (seed 0) ``arch`` model through ``transformers.<auto_class>``, in memory."""
    import torch
    import transformers

    torch.manual_seed(0)
    return getattr(transformers, auto_class).from_config(tiny_config(arch, **config_overrides))


def train_steps(model, batches: list[dict[str, Any]], steps: int, lr: float = 3e-3) -> list[float]:
    """A plain AdamW loop over ``batches`` (cycled) for ``steps`` optimizer steps; returns the losses."""
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        loss = model(**batches[step % len(batches)]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def run_tiny_job(workdir: str | Path, task: str, arch: str, train_rows: list[dict[str, Any]],
                 eval_rows: list[dict[str, Any]], max_length: int = 64, **training: Any) -> dict[str, Any]:
    """Fine-tune a tiny ``arch`` model on ``task`` end to end with ``finetune_trainer.train.run``: the model, the
    rows (as train.jsonl and validation.jsonl) and the output all live under ``workdir``. Returns the summary."""
    from finetune_trainer.config import TrainerConfig
    from finetune_trainer.tasks.base import get_task
    from finetune_trainer.train import run

    workdir = Path(workdir)
    model = save_tiny_model(arch, get_task(task).auto_model, workdir / "model")
    write_rows(train_rows, workdir / "data" / "train.jsonl")
    write_rows(eval_rows, workdir / "data" / "validation.jsonl")
    config = TrainerConfig.model_validate({
        "name": f"tiny-{task}", "model": {"source": str(model)}, "task": task,
        "dataset": {"source": str(workdir / "data"), "maxLength": max_length}, "strategy": {"type": "full"},
        "training": {"epochs": 2, "batchSize": 8, "learningRate": 3e-3, **training},
        "output": {"location": str(workdir / "output")}, "metricsPort": 0,
    })
    return run(config)


@pytest.fixture
def one_torch_thread():
    """A fixture (import it into a test module and name it in ``usefixtures``): the test runs torch on one
    intra-op thread. Tiny models gain nothing from more, and on a loaded 2-core machine a second OpenMP thread
    spin-waits: a tiny BERT step measured 0.5 s with 2 threads and 13 ms with 1."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
