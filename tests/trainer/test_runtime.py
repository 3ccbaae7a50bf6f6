"""Runtime: CPU threads from the cgroup quota, precision choice, and real multi-process runs under torchrun
(gloo on CPU): DDP with staged unfreezing, FSDP2 with LoRA."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from finetune_trainer.config import Precision
from finetune_trainer.errors import ConfigError
from finetune_trainer.runtime import cpu_has_amx_bf16, cpu_quota, resolve_precision, thread_budget


@pytest.mark.parametrize(("files", "expected"), [
    ({"cpu.max": "200000 100000\n"}, 2.0),
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_cpu_quota_from_cgroup_v2_and_v1(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpu_quota(tmp_path) == expected


def test_thread_budget_rounds_the_quota_up_and_honours_omp_num_threads(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert thread_budget(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert thread_budget(tmp_path) >= 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert thread_budget(tmp_path) == 3


def test_precision_auto_on_cpu_is_bf16_only_with_amx_and_fp16_needs_a_gpu():
    cpu = torch.device("cpu")
    assert resolve_precision(Precision.AUTO, cpu) == ("bf16" if cpu_has_amx_bf16() else "fp32")
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError) as info:
        resolve_precision("fp16", cpu)
    assert info.value.field == "training.precision"


def torchrun(config_path, tmp_path, fsdp=False):
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    if fsdp:
        env["FINETUNE_FSDP"] = "1"
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "-m", "finetune_trainer", "--config", str(config_path)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)


@pytest.mark.parametrize(("strategy", "fsdp", "saved"), [
    ({"type": "hybrid", "layers": "last:1", "unfreeze": [{"epoch": 1, "layers": "2"}]}, False, "model.safetensors"),
    ({"type": "lora"}, True, "adapter_model.safetensors"),
])
def test_two_processes_train_and_save_once(tmp_path, tiny_model_dir, job, strategy, fsdp, saved):
    config = job(tiny_model_dir("bert"), strategy, epochs=2, batchSize=16, saveEvery=4)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.wire()))

    result = torchrun(path, tmp_path, fsdp)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["phase"] == "Succeeded"
    # 96 rows: 6 batches of 16, 3 per rank, 2 epochs
    assert summary["progress"]["step"] == summary["progress"]["totalSteps"] == 6
    assert (out / "model" / saved).is_file()
    assert result.stdout.count("model saved to") == 1  # only the main rank reports
    assert "x2" in result.stdout
    if strategy.get("unfreeze"):
        assert "now train fully" in result.stdout


def test_amx_is_read_from_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert not cpu_has_amx_bf16(info)  # AVX-512 bf16 alone: bf16 measured slower than fp32
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert cpu_has_amx_bf16(info) == torch.backends.mkldnn.is_available()
    assert not cpu_has_amx_bf16(tmp_path / "missing")
