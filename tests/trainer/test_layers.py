"""Layer resolver: block stacks found from structure on every family, selection syntax, parts, and errors that
name the field and the model's block count."""

from __future__ import annotations

import pytest
from finetune_trainer.errors import LayerSelectionError
from finetune_trainer.layers import linear_modules, resolve_layout, select_blocks
from tiny_models import tiny_model

SEQ_CLS = "AutoModelForSequenceClassification"

# (arch, auto class) -> (stack names in forward order, block class per stack)
EXPECTED_STACKS = {
    ("bert", SEQ_CLS): (["bert.encoder.layer"], ["BertLayer"]),
    ("roberta", SEQ_CLS): (["roberta.encoder.layer"], ["RobertaLayer"]),
    ("distilbert", SEQ_CLS): (["distilbert.transformer.layer"], ["TransformerBlock"]),  # no _no_split_modules
    ("gpt2", "AutoModelForCausalLM"): (["transformer.h"], ["GPT2Block"]),
    ("llama", SEQ_CLS): (["model.layers"], ["LlamaDecoderLayer"]),
    ("qwen2", "AutoModelForCausalLM"): (["model.layers"], ["Qwen2DecoderLayer"]),
    ("t5", "AutoModelForSeq2SeqLM"): (["encoder.block", "decoder.block"], ["T5Block", "T5Block"]),
    ("bart", SEQ_CLS): (["model.encoder.layers", "model.decoder.layers"], ["BartEncoderLayer", "BartDecoderLayer"]),
}


def layout_of(arch: str, auto_class: str = SEQ_CLS, **overrides):
    if auto_class == SEQ_CLS:
        overrides.setdefault("num_labels", 2)
    return resolve_layout(tiny_model(arch, auto_class, **overrides))


@pytest.mark.parametrize(("arch", "auto_class"), list(EXPECTED_STACKS))
def test_stacks_are_found_from_structure(arch, auto_class):
    layout = layout_of(arch, auto_class)
    names, classes = EXPECTED_STACKS[(arch, auto_class)]

    assert [s.name for s in layout.stacks] == names
    assert [s.block_class for s in layout.stacks] == classes
    assert [b.index for b in layout.blocks] == list(range(4))
    assert layout.traced and layout.unused == []
    # Every parameter lands in exactly one group.
    grouped = [n for entry in layout.block_params for n in entry] + layout.embeddings + layout.head
    grouped += [n for names in layout.glue.values() for n in names]
    assert sorted(grouped) == sorted(layout.params)


def test_non_block_parameters_sort_by_when_the_forward_uses_them():
    bert = layout_of("bert")
    assert all(n.startswith("bert.embeddings.") for n in bert.embeddings)  # LayerNorm after embeddings included
    assert bert.head == ["bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"]

    bart = layout_of("bart")
    assert "model.encoder.layernorm_embedding.weight" in bart.embeddings  # before the first block
    assert bart.glue == {1: ["model.decoder.layernorm_embedding.weight", "model.decoder.layernorm_embedding.bias"]}

    t5 = layout_of("t5", "AutoModelForSeq2SeqLM")
    assert t5.glue == {1: ["encoder.final_layer_norm.weight"]}  # trains with the last encoder block
    assert t5.head == ["decoder.final_layer_norm.weight"]  # the LM head is tied to the embeddings


def test_tied_lm_head_counts_as_embeddings():
    gpt2 = layout_of("gpt2", "AutoModelForCausalLM")
    assert gpt2.embeddings == ["transformer.wte.weight", "transformer.wpe.weight"]
    assert gpt2.head == ["transformer.ln_f.weight", "transformer.ln_f.bias"]


@pytest.mark.parametrize("arch", ["bert", "distilbert", "gpt2", "llama", "t5", "bart"])
def test_parts_split_each_block_into_attention_mlp_and_norm(arch):
    auto = "AutoModelForSeq2SeqLM" if arch == "t5" else SEQ_CLS
    layout = layout_of(arch, auto)
    parts = layout.block_params[0]
    by_part = {part: {n.rsplit(".", 2)[-2] for n, p in parts.items() if p == part} for part in ("attention", "mlp",
                                                                                                 "norm")}
    assert all(by_part.values()), by_part
    assert by_part["norm"] == {
        "bert": {"LayerNorm"}, "distilbert": {"sa_layer_norm", "output_layer_norm"}, "gpt2": {"ln_1", "ln_2"},
        "llama": {"input_layernorm", "post_attention_layernorm"}, "t5": {"layer_norm"},
        "bart": {"self_attn_layer_norm", "final_layer_norm"},
    }[arch]
    attention_names = {
        "bert": {"query", "key", "value", "dense"}, "distilbert": {"q_lin", "k_lin", "v_lin", "out_lin"},
        "gpt2": {"c_attn", "c_proj"}, "llama": {"q_proj", "k_proj", "v_proj", "o_proj"},
        "t5": {"q", "k", "v", "o", "relative_attention_bias"}, "bart": {"q_proj", "k_proj", "v_proj", "out_proj"},
    }[arch]
    assert by_part["attention"] == attention_names
    assert not by_part["mlp"] & {"q_proj", "query", "q_lin", "q"}


def test_linear_modules_are_the_lora_candidates():
    layout = layout_of("llama")
    names = linear_modules(layout.blocks[0].module)
    assert sorted(names) == sorted(["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"])
    assert linear_modules(layout.blocks[0].module, ["mlp"]) == ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


@pytest.mark.parametrize(("selector", "expected"), [
    ("all", [0, 1, 2, 3, 4, 5]), ("none", []), (None, [0, 1, 2, 3, 4, 5]),
    ("last:2", [4, 5]), ("first:1", [0]), ("last:6", [0, 1, 2, 3, 4, 5]),
    ("every:2", [1, 3, 5]), ("every:4", [1, 5]), ("every:1", [0, 1, 2, 3, 4, 5]),
    ("0-2,5", [0, 1, 2, 5]), ("3", [3]), ("1,1,2", [1, 2]),
])
def test_selection_syntax(selector, expected):
    assert select_blocks(selector, layout_of("bert", num_hidden_layers=6)) == expected


@pytest.mark.parametrize(("selector", "message"), [
    ("last:30", 'strategy.layers "last:30" selects 30 blocks but the model has 6 (BertLayer); use last:N with N <= 6'),
    ("first:7", "first:N with N <= 6"),
    ("0-6", "selects block 6 but the model has 6 (BertLayer); block indices go from 0 to 5"),
    ("4-2", "runs backwards"),
    ("last:0", "at least 1"),
])
def test_impossible_selections_name_the_field_and_the_block_count(selector, message):
    with pytest.raises(LayerSelectionError) as info:
        select_blocks(selector, layout_of("bert", num_hidden_layers=6))
    assert message in str(info.value)
    assert info.value.field == "strategy.layers"


def test_seq2seq_selection_counts_encoder_then_decoder():
    layout = layout_of("t5", "AutoModelForSeq2SeqLM")
    assert layout.describe_blocks() == "4 (2 T5Block in encoder.block + 2 T5Block in decoder.block)"
    assert [layout.blocks[i].name for i in select_blocks("last:1", layout)] == ["decoder.block.1"]
    assert [layout.blocks[i].name for i in select_blocks("first:1", layout)] == ["encoder.block.0"]
