r"""The run's result: the fine-tuned model in ``<output>/model``, in the form transformers or PEFT loads directly.

What is saved follows from what trained: under lora without embeddings the adapter carries every trained weight,
so the adapter is saved (and the merged model under ``merged/`` with ``output.mergeAdapter``); when base weights
trained too (full, partial, hybrid, lora with embeddings) the adapter alone would be incomplete, so the model is
saved merged. It is written aside and renamed into place, so a crash never leaves half a model under ``model``.

After the rename, rank 0 writes the export record ``<output>/export.json``: the model's form (``adapter`` or
``model``), each file's sha256 and size, the model's digest, when it was exported, its lineage and the run's state
(progress, metrics, parameters, checkpoint). The record is what the push sends and what status reports; a later
attempt of the same config finds it (``load_record``) and goes straight to the push instead of loading the model
and data again, so a failed push is retried without retraining.

The model's digest is the sha256 of its file listing, one ``<sha256 hex>  <relative path>\n`` line per file in
byte order of the paths, which is what ``sha256sum`` prints, so anyone can recompute it::

    cd model && find . -type f | sed 's|^\./||' | LC_ALL=C sort | xargs sha256sum | sha256sum
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from finetune_trainer import runtime
from finetune_trainer.config import TrainerConfig
from finetune_trainer.oci import sha256_file
from finetune_trainer.strategies import Strategy
from finetune_trainer.summary import now

RECORD = "export.json"

log = logging.getLogger("finetune_trainer")


def save_model(strategy: Strategy, tokenizer: Any, output: Path, rt: runtime.Runtime, merge_adapter: bool) -> Path:
    """Write ``<output>/model``; every rank calls it (under FSDP the weights are gathered from all of them)."""
    target = output / "model"
    staging = output / ".tmp-model"
    state_dict = runtime.full_state_dict(strategy.model) if runtime.is_fsdp(strategy.model) else None
    if rt.is_main:
        if staging.exists():
            shutil.rmtree(staging)
        model = strategy.model
        if form(strategy) == "adapter":
            model.save_pretrained(staging, state_dict=state_dict)
            if merge_adapter:
                model.merge_and_unload().save_pretrained(staging / "merged")
                tokenizer.save_pretrained(staging / "merged")
        else:
            if strategy.uses_adapters:
                model = model.merge_and_unload()
            # Packed training runs without the KV cache; the saved model should generate with it.
            if getattr(model.config, "use_cache", None) is False:
                model.config.use_cache = True
            model.save_pretrained(staging, state_dict=state_dict)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        log.info("model saved to %s", target)
    rt.barrier()
    return target


def form(strategy: Strategy) -> str:
    """``adapter`` when the PEFT adapter alone carries every trained weight, else ``model`` (merged)."""
    return "adapter" if strategy.uses_adapters and strategy.adapter_is_complete else "model"


def tree_digest(root: Path) -> tuple[str, dict[str, dict[str, Any]]]:
    """The digest of a file or a directory (see the module docstring) and each file's digest and size."""
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    files = {(p.name if p == root else p.relative_to(root).as_posix()): {"digest": sha256_file(p),
                                                                         "size": p.stat().st_size}
             for p in paths}
    listing = "".join(f"{f['digest'].removeprefix('sha256:')}  {name}\n" for name, f in sorted(files.items()))
    return f"sha256:{hashlib.sha256(listing.encode()).hexdigest()}", files


@dataclass
class Exported:
    """The export record: what ``<output>/model`` holds and where it came from."""

    form: str
    digest: str
    files: dict[str, dict[str, Any]]
    created: str
    lineage: dict[str, str]  # base model, dataset fingerprint, strategy: push.annotations turns it into annotations
    run: dict[str, Any]  # summary.Report.run_state() at export
    config: str  # config_key(config) of the run that exported it


def config_key(config: TrainerConfig) -> str:
    """What must match for a record to be this run's: the config but for where it is pushed and the metrics port,
    which change nothing in the model (so fixing a push reference or Secret does not retrain)."""
    wire = config.wire()
    wire.pop("metricsPort", None)
    wire.get("output", {}).pop("push", None)
    return hashlib.sha256(json.dumps(wire, sort_keys=True).encode()).hexdigest()


def write_record(model: Path, config: TrainerConfig, form: str, lineage: dict[str, str],
                 run: dict[str, Any]) -> Exported:
    """Digest the exported ``model`` folder and record it beside it, atomically; rank 0 only."""
    digest, files = tree_digest(model)
    exported = Exported(form=form, digest=digest, files=files, created=now(), lineage=lineage, run=run,
                        config=config_key(config))
    tmp = model.parent / f".{RECORD}.tmp"
    with tmp.open("w") as f:
        json.dump(asdict(exported), f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, model.parent / RECORD)
    return exported


def load_record(output: Path, config: TrainerConfig) -> Exported | None:
    """The record of this config's final model when it is complete on disk, else None (then the run trains)."""
    try:
        exported = Exported(**json.loads((output / RECORD).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    model = output / "model"
    intact = all((model / name).is_file() and (model / name).stat().st_size == f["size"]
                 for name, f in exported.files.items())
    return exported if exported.config == config_key(config) and intact else None
