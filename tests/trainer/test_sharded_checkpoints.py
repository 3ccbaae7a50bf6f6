"""FSDP checkpoints written shard by shard (torch.distributed.checkpoint), with the real entry point under torchrun:
two CPU processes (gloo) train a tiny Llama sharded with FSDP2, each rank writes its own shard of the weights and
optimizer state, rank 0 holds no gathered copy; killed after a checkpoint, the restarted run resumes from it and
ends with exactly the weights and optimizer state of a run that was never interrupted. With an s3:// output on
two "nodes" (two torchrun agents, each with its own staging directory, as two pods have their own /tmp), each
node's shard reaches the bucket before the checkpoint's COMPLETE marker, and new pods resume from the bucket."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from finetune_trainer.objectstore import S3Uri
from ports import free_port
from tiny_models import instruction_rows, save_tiny_model, write_rows

NPROC = 2


@pytest.fixture
def sharded_job(tmp_path):
    """A config file for a tiny Llama causal-LM run of 60 steps, checkpointing every 5, under ``output``."""
    model = save_tiny_model("llama", "AutoModelForCausalLM", tmp_path / "model")
    write_rows(instruction_rows(240, seed=0), tmp_path / "data" / "train.jsonl")
    write_rows(instruction_rows(8, seed=1), tmp_path / "data" / "validation.jsonl")

    def make(output):
        config = {"name": "sharded", "model": {"source": str(model)}, "task": "causal-lm",
                  "dataset": {"source": str(tmp_path / "data"), "maxLength": 96},
                  "strategy": {"type": "full"},
                  "training": {"epochs": 1, "batchSize": 2, "learningRate": 1e-3, "saveEvery": 5, "logEvery": 10,
                               "packing": False},
                  "output": {"location": str(output), "keepCheckpoints": 2}, "metricsPort": 0}
        path = tmp_path / f"{output.name}.json"
        path.write_text(json.dumps(config))
        return path

    return make


def torchrun(config_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FINETUNE_FSDP": "1"}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(NPROC),
                             "-m", "finetune_trainer", "--config", str(config_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def kill_9(proc):
    """kill -9 of torchrun and its workers (they run in sessions of their own, so not by process group)."""
    workers = [int(pid) for pid in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()]
    for pid in [*workers, proc.pid]:
        os.kill(pid, signal.SIGKILL)
    proc.wait()


def finished(proc):
    logs = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, logs[-4000:]
    return logs


def complete_steps(output):
    return sorted(int(p.name[5:]) for p in (output / "checkpoints").glob("step-*") if (p / "COMPLETE").is_file())


def shard_files(step_dir):
    """Which shard file holds each piece of each saved tensor, from DCP's index."""
    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(str(step_dir)).read_metadata()
    files: dict[str, set[str]] = {}
    for index, info in metadata.storage_data.items():
        files.setdefault(index.fqn, set()).add(info.relative_path)
    return files


def saved_state(step_dir, tmp_path):
    """A sharded checkpoint as one plain dict (the test's view; the trainer never gathers it)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    target = tmp_path / f"{step_dir.parent.parent.name}-{step_dir.name}.pt"
    dcp_to_torch_save(str(step_dir), str(target))
    return torch.load(target, weights_only=False)


def flat(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def test_killed_fsdp_run_resumes_from_its_sharded_checkpoint_exactly(tmp_path, sharded_job):
    straight_out, killed_out = tmp_path / "straight", tmp_path / "killed"
    straight = finished(torchrun(sharded_job(straight_out)))
    total = int(re.search(r"; (\d+) steps,", straight).group(1))
    assert total >= 40 and complete_steps(straight_out)[-1] == total

    # Each rank wrote its own shard; nothing gathered on rank 0, and no unsharded weights or optimizer file.
    last = straight_out / "checkpoints" / f"step-{total}"
    names = {p.name for p in last.iterdir()}
    assert {".metadata", "__0_0.distcp", "__1_0.distcp", "rng-rank0.pt", "rng-rank1.pt", "COMPLETE"} <= names
    assert not names & {"trainable.safetensors", "optimizer.pt"}
    pieces = shard_files(last)
    embedding = "model.model.embed_tokens.weight"
    assert pieces[embedding] == {"__0_0.distcp", "__1_0.distcp"}, pieces[embedding]
    assert any(k.startswith("optimizer.state.") and v == {"__0_0.distcp", "__1_0.distcp"} for k, v in pieces.items())

    # kill -9 of every process right after a checkpoint is committed, then restart with the same config
    proc = torchrun(sharded_job(killed_out))
    deadline = time.monotonic() + 240
    while not (killed_out / "checkpoints").is_dir() or not complete_steps(killed_out):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-4000:]
        time.sleep(0.01)
    kill_9(proc)
    saved = complete_steps(killed_out)
    assert saved[-1] < total and not (killed_out / "model").exists()

    resumed_logs = finished(torchrun(sharded_job(killed_out)))
    resumed = re.search(rf"resumed from \S+: step (\d+)/{total}", resumed_logs)
    assert resumed and int(resumed.group(1)) == saved[-1], resumed_logs[-3000:]

    a, b = (saved_state(out / "checkpoints" / f"step-{total}", tmp_path) for out in (straight_out, killed_out))
    a, b = flat(a), flat(b)
    assert a.keys() == b.keys() and any(k.startswith("optimizer.state.") for k in a)
    differ = [k for k in a if isinstance(a[k], torch.Tensor) and not torch.equal(a[k], b[k])]
    assert not differ, differ
    assert a["optimizer.state.model.embed_tokens.weight.step"] == total
    # The final model is an ordinary transformers directory, gathered once at the end.
    ma, mb = (load_file(str(out / "model" / "model.safetensors")) for out in (straight_out, killed_out))
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)


def two_nodes(config_path, tmp_path, env, attempt):
    """Two torchrun agents of one process each on a static rendezvous, as two single-GPU pods; each node stages an
    s3:// output in its own directory."""
    port = free_port()
    return [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node),
         "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
         "-m", "finetune_trainer", "--config", str(config_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **env, "OMP_NUM_THREADS": "1", "FINETUNE_FSDP": "1",
             "FINETUNE_STAGING_ROOT": str(tmp_path / f"{attempt}-node{node}")}) for node in range(2)]


def test_each_node_uploads_its_shards_before_the_bucket_commit_and_new_pods_resume(s3_server, s3_env, s3_inputs,
                                                                                  tmp_path):
    bucket = s3_server.bucket("sharded")
    output = f"s3://{bucket}/run"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "name": "sharded-s3", "model": {"source": s3_inputs["model"]}, "task": "sequence-classification",
        "dataset": {"source": s3_inputs["data"], "maxLength": 32}, "strategy": {"type": "full"},
        "training": {"epochs": 1, "batchSize": 8, "learningRate": 1e-2, "saveEvery": 1},
        "output": {"location": output, "keepCheckpoints": 2}, "metricsPort": 0}))

    first = [finished(p) for p in two_nodes(config, tmp_path, s3_env, "first")]
    keys = s3_server.keys(bucket, "run/checkpoints/")
    steps = sorted({int(k.split("/step-")[1].split("/")[0]) for k in keys})
    assert steps == [5, 6], keys  # 96 rows, 8 per rank per step; keepCheckpoints 2 pruned the bucket
    files = {k.rsplit("/", 1)[1] for k in keys if "/step-6/" in k}
    assert files == {".metadata", "__0_0.distcp", "__1_0.distcp", "rng-rank0.pt", "rng-rank1.pt", "trainer_state.json",
                     "manifest.json", "config.json", "COMPLETE"}, files
    assert not list((tmp_path / "first-node1").rglob(".tmp-step-*"))  # node 1 keeps no staged leftovers
    assert "model saved to" in first[0]

    # The newest checkpoint's marker is lost (its upload cut): new pods, fresh staging, resume from step 5.
    s3_server.client().delete_object(Bucket=bucket, Key="run/checkpoints/step-6/COMPLETE")
    again = [finished(p) for p in two_nodes(config, tmp_path, s3_env, "again")]
    assert "restored checkpoint step 5" in again[0] and re.search(r"resumed from \S+: step 5/6", again[0]), again[0]
    summary = json.loads(s3_server.client().get_object(Bucket=bucket, Key="run/summary.json")["Body"].read())
    assert summary["phase"] == "Succeeded"
    assert summary["checkpoint"] == {"location": f"{S3Uri.parse(output)}/checkpoints/step-6", "step": 6}
