"""One FineTuneJob, two places (places.py): a trainer pod keeps the locations as written, this machine reads
relative paths from the manifest's folder and refuses what only a cluster has."""

from pathlib import Path

import pytest

from finetune_operator.api import FineTuneJob
from finetune_operator.places import SCRATCH_OUTPUT, InPod, LocalRunError, OnThisMachine, trainer_config


def finetunejob(model="models/bert", data="data/reviews", output=None) -> FineTuneJob:
    return FineTuneJob.model_validate({
        "apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "demo"},
        "spec": {"model": {"source": model}, "task": "sequence-classification", "dataset": {"source": data},
                 "strategy": {"type": "full"}, "resources": {"gpus": 1}, **({"output": {"location": output}}
                                                                             if output else {})},
    })


def test_the_config_carries_the_trainer_part_of_the_spec_only():
    config = trainer_config(finetunejob(output="/out"), InPod(metrics_port=9090))
    assert config.name == "demo" and config.output.location == "/out" and config.metrics_port == 9090
    assert "resources" not in config.wire()


def test_in_a_pod_locations_stay_as_written_and_an_unset_output_is_scratch_space():
    ftj = finetunejob("pvc://models/bert", "hf://glue?config=mrpc")
    config = trainer_config(ftj, InPod(metrics_port=9090))
    assert (config.model.source, config.dataset.source) == ("pvc://models/bert", "hf://glue?config=mrpc")
    assert config.output.location == SCRATCH_OUTPUT


def test_on_this_machine_relative_paths_are_read_from_the_manifests_folder(tmp_path):
    here = OnThisMachine(tmp_path, metrics_port=0)
    config = trainer_config(finetunejob("models/bert", "/abs/data", output="out"), here)
    assert config.model.source == str(tmp_path / "models" / "bert")
    assert config.dataset.source == "/abs/data" and config.output.location == str(tmp_path / "out")
    assert config.metrics_port == 0 and here.output_note(finetunejob(output="out")) is None


def test_on_this_machine_a_claim_is_refused_naming_the_field(tmp_path):
    with pytest.raises(LocalRunError, match=r"spec.dataset.source: 'pvc://data/x' is a volume in the cluster"):
        trainer_config(finetunejob(data="pvc://data/x"), OnThisMachine(tmp_path))


def test_on_this_machine_an_output_that_is_not_local_goes_to_runs_with_a_note(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ftj = finetunejob(output="pvc://ckpt/run")
    here = OnThisMachine(tmp_path)
    assert trainer_config(ftj, here).output.location == str(tmp_path / "runs" / "demo")
    assert "is not a local path; writing to" in here.output_note(ftj)
    assert trainer_config(finetunejob(), here).output.location == str(tmp_path / "runs" / "demo")
    override = OnThisMachine(tmp_path, output_override="elsewhere")
    assert trainer_config(ftj, override).output.location == str(Path("elsewhere").resolve())
    assert override.output_note(ftj) is None


def test_s3_locations_stay_as_written_in_both_places_and_a_pod_fills_the_operators_defaults(tmp_path):
    from finetune_trainer.output_spec import S3Spec

    ftj = finetunejob("s3://models/bert", "s3://data/reviews", output="s3://ckpt/run")
    here = OnThisMachine(tmp_path)
    local = trainer_config(ftj, here)
    assert (local.model.source, local.dataset.source, local.output.location) == (
        "s3://models/bert", "s3://data/reviews", "s3://ckpt/run")
    assert here.output_note(ftj) is None and local.storage is None  # this machine's AWS environment decides
    defaults = S3Spec.model_validate({"endpoint": "http://s3.storage:8333", "addressingStyle": "path"})
    pod = trainer_config(ftj, InPod(metrics_port=9090, s3_defaults=defaults))
    assert pod.storage.s3 == defaults
    assert trainer_config(finetunejob(output="/out"), InPod(9090, defaults)).storage is None  # no s3:// location
