"""`finetune` as a user meets it: bad manifests end with one line naming the field, no traceback."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finetune_trainer.config import EXIT_PERMANENT

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())


def finetune(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "finetune_operator.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def broken(tmp_path, mutate) -> Path:
    doc = yaml.safe_load(yaml.safe_dump(QUICKSTART))
    mutate(doc)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    return path


@pytest.mark.parametrize("command", ["run", "plan"])
@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["spec"]["strategy"].update(type="magic"), "spec.strategy.type"),
    (lambda d: d["spec"].pop("model"), "spec.model"),
    (lambda d: d["spec"].setdefault("resources", {}).update(gpus=-1), "spec.resources.gpus"),
    (lambda d: d.update(kind="Deployment", apiVersion="apps/v1"), "not a FineTuneJob"),
    (lambda d: d["spec"]["model"].update(source="pvc://models/bert"), "spec.model.source"),
    (lambda d: d["spec"].update(strategy={"type": "lora", "lora": {"quantization": "nf4"}}),
     "spec.strategy.lora.quantization (4-bit base weights, QLoRA) needs GPUs"),
], ids=["unknown-strategy", "missing-model", "negative-gpus", "not-a-finetunejob", "cluster-only-source",
        "qlora-on-cpu"])
def test_bad_manifest_is_one_line_naming_the_field(tmp_path, command, mutate, field):
    result = finetune(command, str(broken(tmp_path, mutate)))
    assert result.returncode == EXIT_PERMANENT
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and field in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("command", ["run", "plan"])
def test_every_problem_is_listed_one_line_each_with_its_field(tmp_path, command):
    def mutate(doc):
        doc["spec"]["strategy"]["type"] = "magic"
        doc["spec"]["training"] = {"epochs": -1, "learningRate": "fast"}
        doc["spec"]["pod"] = {"env": [{"name": "HOME", "value": "/root"}],
                              "volumes": [{"name": "host", "hostPath": {"path": "/"}}]}
    result = finetune(command, str(broken(tmp_path, mutate)))
    assert result.returncode == EXIT_PERMANENT and "more problem" not in result.stderr
    lines = result.stderr.strip().splitlines()
    fields = ["spec.strategy.type", "spec.training.epochs", "spec.training.learningRate", "spec.pod.env[0]",
              "spec.pod.volumes[0]"]
    assert len(lines) == len(fields), result.stderr
    for line, field in zip(lines, fields):
        assert line.startswith(f"error: {tmp_path / 'job.yaml'}: {field}: "), (line, field)
    assert "hostPath is not allowed" in lines[-1] and "the operator sets" in lines[-2]


def test_crd_command_prints_the_committed_crd():
    result = finetune("crd")
    assert result.returncode == 0
    assert result.stdout == (ROOT / "crds" / "finetune.io_finetunejobs.yaml").read_text()
