"""An s3:// output against a real S3 server (SeaweedFS, tests/s3_live.py): the model, checkpoints, summary and
TensorBoard event files committed in the bucket (model and checkpoints with their COMPLETE markers last),
keepCheckpoints pruning there, s3:// URIs in the summary, and a resume that takes the newest complete checkpoint of
the bucket."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from finetune_trainer import train
from finetune_trainer.objectstore import S3Uri


def complete_steps(s3_server, uri: str) -> list[int]:
    parsed = S3Uri.parse(uri)
    keys = s3_server.keys(parsed.bucket, parsed.key("checkpoints/"))
    return sorted(int(k.split("/step-")[1].split("/")[0]) for k in keys if k.endswith("/COMPLETE"))


def test_trains_from_the_bucket_and_commits_checkpoints_and_model_there(s3_server, s3_env, s3_job):
    bucket = s3_server.bucket("out")
    output = f"s3://{bucket}/runs/first"
    summary = train.run(s3_job(output, saveEvery=1, keep=2))

    assert summary["phase"] == "Succeeded"
    assert summary["output"]["location"] == f"{output}/model"
    assert summary["checkpoint"] == {"location": f"{output}/checkpoints/step-6", "step": 6}
    keys = s3_server.keys(bucket)
    assert "runs/first/model/COMPLETE" in keys and "runs/first/model/config.json" in keys
    assert "runs/first/summary.json" in keys
    # The TensorBoard event files are where the summary says, not only in the pod's staging copy.
    assert summary["tracking"]["tensorboard"] == f"{output}/tensorboard"
    assert [k for k in keys if k.startswith("runs/first/tensorboard/events.out.tfevents.")]
    # saveEvery 1 wrote six checkpoints; keepCheckpoints 2 left the newest two, every file there
    assert complete_steps(s3_server, output) == [5, 6]
    step6 = {k.rsplit("/", 1)[1] for k in keys if "/checkpoints/step-6/" in k}
    assert {"trainable.safetensors", "optimizer.pt", "trainer_state.json", "manifest.json", "config.json",
            "rng-rank0.pt", "COMPLETE"} <= step6
    assert not [k for k in keys if "/checkpoints/step-" in k and "/step-5/" not in k and "/step-6/" not in k]
    uploaded = json.loads(s3_server.client().get_object(Bucket=bucket, Key="runs/first/summary.json")["Body"].read())
    assert uploaded["output"]["location"] == f"{output}/model"
    assert summary["downloadBytes"]["model"] > 0 and summary["downloadBytes"]["dataset"] > 0


def test_a_new_attempt_resumes_from_the_bucket_not_from_what_it_has_locally(s3_server, s3_env, s3_job, tmp_path,
                                                                           monkeypatch, caplog):
    bucket = s3_server.bucket("out")
    output = f"s3://{bucket}/run"
    first = train.run(s3_job(output, saveEvery=2, keep=3))
    assert complete_steps(s3_server, output) == [2, 4, 6]
    # The bucket loses its newest checkpoint's marker (as if its upload had been cut): it is not complete any more.
    s3_server.client().delete_object(Bucket=bucket, Key="run/checkpoints/step-6/COMPLETE")

    # A new pod: fresh staging, the same cache. It resumes from step 4 (the bucket's newest complete), although
    # the previous staging copy holds step 6, and the cache serves the model and data.
    monkeypatch.setenv("FINETUNE_STAGING_ROOT", str(tmp_path / "staging-2"))
    with caplog.at_level("INFO", logger="finetune_trainer"):
        second = train.run(s3_job(output, saveEvery=2, keep=3))
    assert "restored checkpoint step 4" in caplog.text
    assert first["phase"] == second["phase"] == "Succeeded"
    assert second["downloadBytes"]["model"] == 0 and second["downloadBytes"]["dataset"] == 0
    assert second["downloadBytes"]["checkpoint"] > 0
    assert second["checkpoint"] == {"location": f"{output}/checkpoints/step-6", "step": 6}
    assert complete_steps(s3_server, output) == [2, 4, 6]


def test_finetune_run_reads_and_writes_s3_with_the_standard_aws_environment(s3_server, s3_env, s3_inputs, tmp_path):
    bucket = s3_server.bucket("cli")
    manifest = {
        "apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "cli-s3"},
        "spec": {"model": {"source": s3_inputs["model"]}, "task": "sequence-classification",
                 "dataset": {"source": s3_inputs["data"], "maxLength": 32},
                 "strategy": {"type": "full"}, "training": {"epochs": 1, "batchSize": 16},
                 "output": {"location": f"s3://{bucket}/cli"}},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    env = {**os.environ, **s3_env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "finetune_operator.cli", "run", "--no-progress", str(path)],
                            capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    status = yaml.safe_load(result.stdout)["status"]
    assert status["output"]["location"] == f"s3://{bucket}/cli/model"
    assert status["checkpoint"]["location"].startswith(f"s3://{bucket}/cli/checkpoints/step-")
    assert "cli/model/COMPLETE" in s3_server.keys(bucket)
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in result.stderr + result.stdout
