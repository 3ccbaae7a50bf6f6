"""Locations both ways (locations.py): what the trainer opens for a location, and the location a user wrote for a
path under the output."""

from pathlib import Path

from finetune_trainer.locations import claim_of, local_path, user_location


def test_a_claim_opens_under_the_pods_mount_root(monkeypatch, tmp_path):
    monkeypatch.setenv("FINETUNE_PVC_ROOT", str(tmp_path))
    assert local_path("pvc://ckpt/runs/mrpc/") == tmp_path / "ckpt" / "runs" / "mrpc"
    assert local_path("~/runs") == Path.home() / "runs"
    assert claim_of("pvc://ckpt/runs") == "ckpt" and claim_of("/data") is None and claim_of(None) is None


def test_a_path_under_the_output_maps_back_to_what_the_user_wrote(monkeypatch, tmp_path):
    monkeypatch.setenv("FINETUNE_PVC_ROOT", str(tmp_path))
    output = local_path("pvc://ckpt/runs/mrpc")
    assert user_location(output / "checkpoints" / "step-9", "pvc://ckpt/runs/mrpc/") == \
        "pvc://ckpt/runs/mrpc/checkpoints/step-9"
    assert user_location(tmp_path / "out" / "model", str(tmp_path / "out")) == str(tmp_path / "out" / "model")


def test_an_s3_output_is_staged_locally_and_maps_back_to_its_uri(monkeypatch, tmp_path):
    monkeypatch.setenv("FINETUNE_STAGING_ROOT", str(tmp_path))
    staged = local_path("s3://ckpt/runs/mrpc/")
    assert staged == tmp_path / "s3" / "ckpt" / "runs" / "mrpc"
    assert user_location(staged / "checkpoints" / "step-9", "s3://ckpt/runs/mrpc/") == \
        "s3://ckpt/runs/mrpc/checkpoints/step-9"
    assert claim_of("s3://ckpt/runs") is None
