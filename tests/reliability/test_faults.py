"""Faults: real trainer processes killed and starved, and a real control plane losing nodes, its API server and the
operator, under load. For each fault the job completes or ends with an honest reason, no checkpoint is corrupted or
lost, no Job is duplicated and the status converges. The figures go to RELIABILITY.md.

Trainer faults run `python -m finetune_trainer` on tiny models (tests/reliability/trainer_process.py). Cluster faults
run the operator as a process with the chart's RBAC (tests/cluster/operator_process.py) and KWOK pods; the ones
that take the control plane apart (deleting a node, restarting kube-apiserver) do so on a private plane started
for this module, so that other test sessions sharing the default plane are not disturbed.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from cluster.operator_process import (
    FAKE_DURATION,
    FAKE_REASON,
    RUN_FOREVER,
    Env,
    operator_env,
    summary_json,
)
from trainer_process import TrainerRun, config, verify_checkpoint

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO / "tools" / "k8s" / "cluster.sh"
INTERRUPTED = summary_json("Interrupted", "Interrupted", "stopped by signal at step 40; checkpoint saved", 75,
                           checkpoint={"location": "pvc://ckpt/run/checkpoints/step-40", "step": 40})


# ========================================================================================== trainer processes

@pytest.fixture(scope="module")
def wide(tiny: Path) -> Path:
    """A wider tiny BERT (hidden 192, ~2M parameters, 23 MB per full checkpoint with optimizer state), so that
    with saveEvery 1 the trainer spends much of its time writing checkpoints."""
    import tiny_models

    path = tiny / "pvc" / "ckpt" / "models" / "wide"
    if not path.exists():
        tiny_models.save_tiny_model("bert", "AutoModelForSequenceClassification", path, num_labels=2,
                                    hidden_size=192, intermediate_size=768, num_attention_heads=2)
    return path


def test_trainer_killed_with_sigkill_mid_epoch_resumes_from_its_last_checkpoint(tiny: Path, tmp_path: Path,
                                                                                 figures) -> None:
    run = TrainerRun(tmp_path, config(tiny, tmp_path / "out", saveEvery=10))
    run.start()
    run.wait_until(lambda: max(run.complete_steps(), default=0) >= 20)
    time.sleep(random.uniform(0, 0.05))
    run.kill()
    assert run.wait() == -signal.SIGKILL
    killed_at = max(run.logged_steps())
    saved = max(run.complete_steps())
    for step in run.complete_steps():
        verify_checkpoint(run.checkpoint_root() / f"step-{step}")

    assert run.run() == 0, run.tail()
    resumed = re.search(r"resumed from \S+: step (\d+)/(\d+)", run.last_start_log())
    assert resumed, run.tail()
    resumed_at, total = int(resumed.group(1)), int(resumed.group(2))
    assert resumed_at == saved and killed_at < total  # killed mid-epoch (1 epoch), resumed at the newest checkpoint
    assert min(run.logged_steps()) == saved + 1  # the second process did not start over
    summary = run.summary()
    assert summary["phase"] == "Succeeded" and summary["progress"]["step"] == total
    verify_checkpoint(run.checkpoint_root() / f"step-{total}")
    figures.add("fault: trainer kill -9 mid-epoch", "killed at step", f"{killed_at} of {total} (epoch 1 of 1)")
    figures.add("fault: trainer kill -9 mid-epoch", "resumed from step (newest complete checkpoint)", resumed_at)
    figures.add("fault: trainer kill -9 mid-epoch", "steps redone (bounded by saveEvery 10)", killed_at - resumed_at)
    figures.add("fault: trainer kill -9 mid-epoch", "outcome", f"Succeeded, step {total}/{total}, 0 checkpoints lost")


def test_sigterm_during_checkpoint_writes_exits_75_and_no_half_checkpoint_is_picked(wide: Path, tiny: Path,
                                                                                    tmp_path: Path, figures) -> None:
    """saveEvery 1 on a wide model: the trainer is nearly always writing a checkpoint. SIGTERM exactly while a
    staging directory (.tmp-step-N) exists; then a second SIGTERM during the save that the first one asked for
    (the trainer stops at once, leaving that save half-written). Every restart must resume from a complete
    checkpoint, never from a half-written one."""
    cfg = config(tiny, tmp_path / "out", model="wide", saveEvery=1, maxSteps=30)
    run = TrainerRun(tmp_path, cfg)

    def check_all_complete() -> list[int]:
        steps = run.complete_steps()
        for step in steps:
            verify_checkpoint(run.checkpoint_root() / f"step-{step}")
        return steps

    def resumed_at() -> int:
        return int(re.search(r"resumed from \S+: step (\d+)/", run.last_start_log()).group(1))

    # 1. SIGTERM while a checkpoint is being written: the write completes, the trainer saves once more at the end
    #    of the step it is in, and exits 75.
    run.start()
    writing = run.wait_until(lambda: run.complete_steps() and run.staging())
    run.send(signal.SIGTERM)
    during_write = int(run.staging() == writing)  # still there after the signal: it arrived during that write
    assert run.wait(120) == 75, run.tail()
    summary = run.termination()
    assert (summary["phase"], summary["reason"], summary["exitCode"]) == ("Interrupted", "Interrupted", 75)
    steps = check_all_complete()
    assert summary["checkpoint"]["step"] == steps[-1], (summary, steps)  # the save the signal asked for
    resumed_from = []

    # 2. A second SIGTERM while that requested save is being written: the trainer stops at once, leaving it half.
    run.start()
    first = run.wait_until(lambda: run.complete_steps() and run.staging())[0]
    resumed_from.append(resumed_at())
    assert resumed_from[-1] == steps[-1]
    run.send(signal.SIGTERM)
    during_write += int(first in run.staging())
    writing = run.wait_until(lambda: [s for s in run.staging() if s != first])
    run.send(signal.SIGTERM)
    during_write += int([s for s in run.staging() if s != first] == writing)
    code = run.wait(120)
    half_written = run.staging()
    summary = run.termination()
    # 75 and "again" when the second signal landed inside that save (the usual case); had the save just finished,
    # the trainer was already on its way out (75, checkpoint saved) or gone (-15). Never anything else.
    assert code in (75, -signal.SIGTERM), run.tail()
    if code == 75 and half_written:
        assert summary["reason"] == "Interrupted" and "again: stopped without saving" in summary["message"], summary
    steps = check_all_complete()

    # 3. The next start resumes from the newest complete checkpoint, never the half-written one, and finishes.
    assert run.run() == 0, run.tail()
    resumed_from.append(resumed_at())
    assert resumed_from[-1] == steps[-1], run.tail()
    assert not run.staging(), run.entries()  # leftovers were cleaned up by the next save
    final = run.summary()
    assert final["phase"] == "Succeeded" and final["progress"]["step"] == 30
    check_all_complete()
    section = "fault: SIGTERM during checkpoint writes"
    figures.add(section, "trainer processes", run.starts)
    figures.add(section, "SIGTERMs that arrived while a checkpoint was being written", f"{during_write} of 3")
    figures.add(section, "exit codes", f"75 (checkpoint saved at the next step); double SIGTERM: {code}")
    figures.add(section, "half-written checkpoints left by the double SIGTERM", half_written)
    figures.add(section, "resumed from (always the newest complete checkpoint)", resumed_from)
    figures.add(section, "complete checkpoints that failed to load", 0)
    figures.add(section, "outcome", "Succeeded, step 30/30")


STRESS = textwrap.dedent('''
    """SIGKILL a process at random moments of checkpoint writes (finetune_trainer.checkpoints, as train.py calls it);
    after each kill, the checkpoint a restart would pick must load completely."""
    import json, os, random, signal, sys, time
    from pathlib import Path
    import torch
    from finetune_trainer import checkpoints
    out, trials = Path(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(11)
    weights = {f"layer{i}.weight": torch.randn(256, 256) for i in range(12)}
    optimizer = {"state": {i: {"exp_avg": torch.randn(256, 256), "exp_avg_sq": torch.rand(256, 256)}
                           for i in range(12)}, "param_groups": [{"params": list(range(12)), "lr": 1e-3}]}
    manifest = {"trainable": sorted(weights)}
    def save(step):
        staging = checkpoints.staging_dir(out, step)
        checkpoints.save_rng(staging, 0)
        checkpoints.save_main(staging, weights, optimizer, {"train": {"step": step}}, manifest, {"name": "stress"})
        checkpoints.commit(out, staging, step, keep=2)
    save(1)
    started = time.perf_counter(); save(2); write = time.perf_counter() - started
    killed = finished = 0; picked = []
    for step in range(3, trials + 3):
        pid = os.fork()
        if pid == 0:
            save(step)
            os._exit(0)
        time.sleep(rng.uniform(0, write * 1.1))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        killed += os.WIFSIGNALED(status); finished += not os.WIFSIGNALED(status)
        latest = checkpoints.latest(out)
        loaded = latest.weights()
        assert set(loaded) == set(weights) and all(torch.equal(loaded[k], weights[k]) for k in weights), step
        assert latest.optimizer_state(torch.device("cpu"))["state"], step
        latest.restore_rng(0)
        assert not picked or latest.step >= picked[-1], (picked[-1], latest.step)
        picked.append(latest.step)
    print(json.dumps({"trials": trials, "killed_mid_write": killed, "finished_before_the_kill": finished,
                      "write_seconds": round(write, 3), "picked": picked,
                      "leftovers": sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("."))}))
''')


def test_sigkill_at_random_moments_of_checkpoint_writes_never_corrupts_the_checkpoint_picked(tmp_path: Path,
                                                                                              figures) -> None:
    pytest.importorskip("torch")
    script = tmp_path / "stress.py"
    script.write_text(STRESS)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "out"), "40"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["killed_mid_write"] >= 20, result  # most kills landed inside a write
    section = "fault: kill -9 at random moments of a checkpoint write (40 writes, ~9 MB each)"
    figures.add(section, "killed mid-write", result["killed_mid_write"])
    figures.add(section, "write finished before the kill", result["finished_before_the_kill"])
    figures.add(section, "seconds per checkpoint write (fsync'd)", result["write_seconds"])
    figures.add(section, "checkpoints picked after a kill that failed to load", 0)
    figures.add(section, "half-written leftovers on disk at the end (never picked)", len(result["leftovers"]))


def _mount_tmpfs(path: Path, size_kib: int, remount: bool = False) -> None:
    options = f"{'remount,' if remount else ''}size={size_kib}k"
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")


@pytest.fixture(scope="module")
def disk_full(tiny: Path, module_tmp: Path) -> Iterator[dict]:
    """Train with the output on a tmpfs that holds one checkpoint but not two; then grow it and train again."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    mount = module_tmp / "full"
    mount.mkdir()
    weights = (tiny / "pvc" / "ckpt" / "models" / "bert4" / "model.safetensors").stat().st_size
    # A full checkpoint is the weights plus twice their size of Adam state: room for one, not for two.
    size_kib = int(weights * 3 * 1.5 / 1024) + 64
    _mount_tmpfs(mount, size_kib)
    try:
        run = TrainerRun(module_tmp / "disk-full", config(tiny, mount / "run", saveEvery=2, maxSteps=10))
        code = run.run()
        result = {"run": run, "code": code, "summary": run.termination(), "steps": run.complete_steps(),
                  "size_kib": size_kib, "checkpoint_kib": weights * 3 // 1024}
        for step in result["steps"]:
            verify_checkpoint(run.checkpoint_root() / f"step-{step}")
        # Space freed (the volume grown): the next attempt resumes from that checkpoint and finishes.
        _mount_tmpfs(mount, 64 * 1024, remount=True)
        result["second_code"] = run.run()
        result["resumed"] = re.search(r"resumed from \S+: step (\d+)/", run.last_start_log())
        yield result
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_disk_full_keeps_the_previous_checkpoint_and_the_job_resumes_once_there_is_room(disk_full: dict,
                                                                                         figures) -> None:
    run, steps = disk_full["run"], disk_full["steps"]
    assert disk_full["code"] != 0, run.tail()
    assert steps, f"no complete checkpoint survived: {run.entries()}"  # verified loadable by the fixture
    assert disk_full["second_code"] == 0, run.tail()
    assert disk_full["resumed"] and int(disk_full["resumed"].group(1)) == steps[-1], run.tail()
    assert run.summary()["phase"] == "Succeeded"
    summary = disk_full["summary"]
    section = "fault: disk full in the output location"
    figures.add(section, "volume", f"tmpfs of {disk_full['size_kib']} KiB; one checkpoint is "
                                   f"~{disk_full['checkpoint_kib']} KiB")
    figures.add(section, "trainer exit on ENOSPC", f"{disk_full['code']} ({summary.get('reason')}, field "
                                                   f"{summary.get('field')}): {str(summary.get('message'))[:160]}")
    figures.add(section, "checkpoint kept intact", f"step {steps[-1]} (loads completely)")
    figures.add(section, "after growing the volume", f"resumed from step {steps[-1]}, Succeeded")


def test_disk_full_is_reported_as_a_retryable_storage_error_naming_the_cause(disk_full: dict) -> None:
    summary = disk_full["summary"]
    assert disk_full["code"] == 75, summary
    assert (summary["reason"], summary["field"], summary["exitCode"]) == ("StorageError", "output.location", 75)
    assert "No space left on device" in summary["message"], summary
    assert summary["checkpoint"]["step"] == disk_full["steps"][-1]


# ========================================================================================== the shared plane

@pytest.fixture(scope="module")
def env(control_plane, module_tmp: Path) -> Iterator[Env]:
    with operator_env(control_plane, module_tmp / "operator", prefix="rel-fault") as environment:
        yield environment


def _job_names(env: Env, name: str) -> list[str]:
    return [j["metadata"]["name"] for j in env.jobs(name)]


@pytest.mark.cluster
def test_pod_failures_through_kwok_are_retried_or_stop_with_the_reason(env: Env, figures) -> None:
    env.apply_job("crashed", pod_metadata=RUN_FOREVER)
    env.apply_job("oom", pod_metadata=RUN_FOREVER)
    [crashed] = env.wait_running_pods("crashed", 1)
    [oom] = env.wait_running_pods("oom", 1)
    # exit 1 with no summary (a segfault, a kill from outside): a new attempt may succeed.
    env.fail_pod(crashed, 1, "")
    env.patch_pod(oom, labels={"finetune.io/fake-fail": "true"},
                  annotations={"finetune.io/fake-exit-code": "137", FAKE_REASON: "OOMKilled"})
    [crashed2] = env.wait_running_pods("crashed", 2)
    env.complete_pod(crashed2)
    done = env.wait_phase("crashed", "Succeeded")
    failed = env.wait_phase("oom", "Failed")
    retry = next(e for e in env.events("crashed") if e["reason"] == "Retrying")
    assert "TrainerExited" in retry["message"] and done["status"]["attempts"] == 2
    assert _job_names(env, "crashed") == ["crashed-a1", "crashed-a2"]
    oom_condition = next(c for c in failed["status"]["conditions"] if c["type"] == "Failed")
    assert oom_condition["reason"] == "OutOfMemory" and "spec.resources.memory" in oom_condition["message"]
    assert failed["status"]["attempts"] == 1 and _job_names(env, "oom") == ["oom-a1"]
    section = "fault: pod failures through KWOK"
    figures.add(section, "exit 1, no summary", f"retried: attempt 2 Succeeded ({retry['message'][:140]})")
    figures.add(section, "OOMKilled (exit 137)", f"Failed at once, not retried: {oom_condition['message']}")


@pytest.mark.cluster
def test_operator_killed_again_and_again_mid_reconcile_makes_no_duplicates(env: Env, figures) -> None:
    names = [f"churn-{i}" for i in range(8)]
    rng = random.Random(3)
    kills = 0
    started = time.monotonic()
    for i, name in enumerate(names):
        env.apply_job(name, pod_metadata={"annotations": {FAKE_DURATION: "6s"}})
        if i % 2:  # kill -9 while it reconciles what was just created, then start it again
            time.sleep(rng.uniform(0, 0.4))
            env.operator.kill()
            kills += 1
            env.operator.start()
    for _ in range(3):  # and a few more while the pods run and finish
        time.sleep(rng.uniform(0.5, 2))
        env.operator.kill()
        kills += 1
        env.operator.start()
    for name in names:
        env.wait_phase(name, "Succeeded", timeout=120)
    converged = time.monotonic() - started
    jobs = {name: _job_names(env, name) for name in names}
    assert all(found == [f"{name}-a1"] for name, found in jobs.items()), jobs
    assert all(env.ftj(name)["status"]["attempts"] == 1 for name in names)
    # The start of a run posts no Event (events.py); its end does, once per job unless a kill lands in between.
    ended = {name: sum(e["reason"] == "TrainingSucceeded" for e in env.events(name)) for name in names}
    section = "fault: operator killed (-9) mid-reconcile"
    figures.add(section, "kills", f"{kills} SIGKILLs of the operator while 8 jobs were created and ran")
    figures.add(section, "Jobs per FineTuneJob", "1 for every job (no duplicate)")
    figures.add(section, "TrainingSucceeded Events per job", sorted(ended.values()))
    figures.add(section, "seconds until all 8 Succeeded", round(converged, 1))


@pytest.mark.cluster
def test_fifty_jobs_created_and_deleted_concurrently_converge_without_duplicates_or_leftovers(
        control_plane, tmp_path: Path, figures) -> None:
    with operator_env(control_plane, tmp_path, poll_interval=2, prefix="rel-fifty") as env:
        names = [f"load-{i:02d}" for i in range(50)]
        docs = [env.job_manifest(name, pod_metadata={"annotations": {FAKE_DURATION: "8s"}},
                                 resources={"cpu": "100m", "memory": "64Mi"}) for name in names]
        deleted, kept = names[1::2], names[0::2]

        def apply(chunk: list[dict]) -> None:
            env.cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(chunk))

        def delete(chunk: list[str]) -> None:
            env.cp.kubectl("delete", "finetunejob", *chunk, "-n", env.ns, "--wait=false")

        started = time.monotonic()
        with ThreadPoolExecutor(5) as pool:  # five clients at once, ten jobs each
            list(pool.map(apply, [docs[i::5] for i in range(5)]))
        created = time.monotonic() - started
        time.sleep(2)  # the operator is busy creating attempts; now half of the jobs are deleted under it
        with ThreadPoolExecutor(5) as pool:
            list(pool.map(delete, [deleted[i::5] for i in range(5)]))

        def children(selector: str = "app.kubernetes.io/managed-by=finetune-operator") -> list[dict]:
            return env.cp.kubectl_json("get", "jobs,pods,configmaps", "-n", env.ns, "-l", selector)["items"]

        def converged() -> bool:
            items = env.cp.kubectl_json("get", "finetunejobs", "-n", env.ns)["items"]
            phases = {i["metadata"]["name"]: (i.get("status") or {}).get("phase") for i in items}
            return sorted(phases) == kept and all(p == "Succeeded" for p in phases.values())
        env.cp.wait_for(converged, timeout=180, interval=1, what="the 25 kept jobs Succeeded, the 25 others gone")
        converge_seconds = time.monotonic() - started
        env.cp.wait_for(lambda: not [c for c in children() if c["metadata"]["labels"]["finetune.io/job"] in deleted],
                        timeout=120, interval=1, what="children of the deleted jobs garbage-collected")
        jobs: dict[str, list[str]] = {}
        for job in env.cp.kubectl_json("get", "jobs", "-n", env.ns)["items"]:
            jobs.setdefault(job["metadata"]["labels"]["finetune.io/job"], []).append(job["metadata"]["name"])
        assert jobs == {name: [f"{name}-a1"] for name in kept}, jobs
        statuses = [env.ftj(name)["status"] for name in kept]
        assert all(s["attempts"] == 1 and s["phase"] == "Succeeded" for s in statuses)
        retries = [e for e in env.cp.kubectl_json("get", "events", "-n", env.ns)["items"] if e["reason"] == "Retrying"]
        assert not retries, retries

        env.cp.kubectl("delete", "finetunejobs", "--all", "-n", env.ns, "--wait=false")
        env.cp.wait_for(lambda: not children(), timeout=120, interval=1, what="every child garbage-collected")
        all_gone = time.monotonic() - started

        def gauge_zero() -> bool:
            metrics = env.operator.metrics()
            values = re.findall(r'^finetune_operator_jobs\{phase="\w+"\} (\S+)$', metrics, re.M)
            return values and all(float(v) == 0 for v in values)
        env.cp.wait_for(gauge_zero, timeout=30, what="finetune_operator_jobs back to 0")
        attempts = sum(float(v) for v in re.findall(r"^finetune_operator_attempts_total\{[^}]*\} (\S+)$",
                                                     env.operator.metrics(), re.M))
        assert env.operator.alive
        section = "fault: 50 FineTuneJobs created and deleted concurrently"
        figures.add(section, "created", f"50 by 5 concurrent clients in {created:.1f}s; 25 deleted 2s later")
        figures.add(section, "trainer Jobs created by the operator", attempts)
        figures.add(section, "Jobs per kept FineTuneJob", "exactly 1 (no duplicate), attempts 1, no Retrying Event")
        figures.add(section, "seconds until the 25 kept Succeeded and the 25 deleted were gone",
                    round(converge_seconds, 1))
        figures.add(section, "seconds until every child was garbage-collected after deleting all", round(all_gone, 1))
        figures.add(section, "leftover Jobs, pods, ConfigMaps", 0)


# ========================================================================================== a private plane

def _plane_env(state: Path, bin_dir: Path) -> dict[str, str]:
    return {**os.environ, "FTO_K8S_STATE": str(state), "FTO_K8S_BIN": str(bin_dir)}


@pytest.fixture(scope="module")
def private_plane(control_plane, tmp_path_factory: pytest.TempPathFactory):
    """A second control plane for this module only (ports picked free; certificates copied from the shared plane's
    state to skip key generation): nodes are deleted and kube-apiserver is restarted here, nowhere else."""
    from cluster.conftest import ControlPlane

    state = tmp_path_factory.mktemp("private-plane")
    if (control_plane.state_dir / "pki").is_dir():
        shutil.copytree(control_plane.state_dir / "pki", state / "pki")
    env = _plane_env(state, control_plane.bin_dir)
    up = subprocess.run([str(CLUSTER_SH), "up"], capture_output=True, text=True, timeout=300, env=env)
    if up.returncode != 0:
        subprocess.run([str(CLUSTER_SH), "down"], capture_output=True, timeout=120, env=env)
        pytest.fail(f"private plane did not start:\n{up.stderr[-4000:]}")
    plane = ControlPlane(kubeconfig=state / "kubeconfig", bin_dir=control_plane.bin_dir, state_dir=state)
    plane.restarted: list[subprocess.Popen] = []
    try:
        yield plane
    finally:
        subprocess.run([str(CLUSTER_SH), "down"], capture_output=True, timeout=120, env=env)
        for proc in plane.restarted:
            proc.wait(30)


@pytest.fixture(scope="module")
def private_env(private_plane, module_tmp: Path) -> Iterator[Env]:
    with operator_env(private_plane, module_tmp / "private-operator", prefix="rel-plane") as environment:
        yield environment


def node_manifest(name: str) -> str:
    """The Node exactly as tools/k8s/cluster.sh registers it (its register_nodes heredoc, read from the script)."""
    body = re.search(r'manifest\+="---\n(.*?)\n"\n', CLUSTER_SH.read_text(), re.S)
    assert body, "tools/k8s/cluster.sh no longer has the register_nodes manifest this test reads"
    return body.group(1).replace('\\"', '"').replace("$name", name)


def restart_apiserver(plane) -> float:
    """kill -9 the plane's kube-apiserver and start it again with the same command line (as a supervisor would);
    returns the seconds until /readyz answered again."""
    pid_file = plane.state_dir / "pids" / "kube-apiserver.pid"
    pid = int(pid_file.read_text())
    args = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    assert args and str(plane.state_dir) in " ".join(args), "not this plane's kube-apiserver"
    started = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]:
        assert time.monotonic() < deadline, "kube-apiserver did not die"
        time.sleep(0.05)
    log_path = plane.state_dir / "logs" / "kube-apiserver.log"

    def start() -> subprocess.Popen:
        with log_path.open("ab") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        plane.restarted.append(proc)
        pid_file.write_text(str(proc.pid))  # cluster.sh status/down manage it like the original
        return proc

    def ready() -> bool:
        # A supervisor restarts a kube-apiserver that exits during start-up (e.g. its port not yet free).
        if plane.restarted[-1].poll() is not None:
            start()
        return plane.kubectl("get", "--raw", "/readyz", check=False, timeout=5).returncode == 0

    start()
    # cluster.sh gives a cold start 90 s; a restart on a loaded CI machine gets as long, plus margin.
    try:
        plane.wait_for(ready, timeout=150, interval=0.25, what="kube-apiserver ready again")
    except AssertionError as exc:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise AssertionError(f"{exc}; restarts: {len(plane.restarted)}; kube-apiserver log tail:\n{tail}") from None
    return time.monotonic() - started


@pytest.mark.cluster
def test_node_deleted_under_a_running_job_is_retried_as_the_next_attempt(private_env: Env, figures) -> None:
    env = private_env
    on_node = {"gpus": 1, "cpu": "1", "memory": "1Gi", "nodeSelector": {"kubernetes.io/hostname": "kwok-node-0"}}
    env.apply_job("orphaned", pod_metadata=RUN_FOREVER, resources=on_node)
    [pod] = env.wait_running_pods("orphaned", 1)
    assert pod["spec"]["nodeName"] == "kwok-node-0"
    node = env.cp.kubectl_json("get", "node", "kwok-node-0")
    started = time.monotonic()
    env.cp.kubectl("delete", "node", "kwok-node-0")
    try:
        # The pod garbage collector removes pods of a deleted node after a 40 s quarantine; the Job fails.
        env.cp.wait_for(lambda: env.jobs("orphaned")[1:], timeout=150, interval=1, what="attempt 2 created")
        retried = time.monotonic() - started
        retry = next(e for e in env.events("orphaned") if e["reason"] == "Retrying")
        # Attempt 2 waits for a node it may run on, and says so.
        waiting = env.cp.wait_for(lambda: not any(p["spec"].get("nodeName") for p in env.pods("orphaned", 2)) and
                                  env.condition("orphaned", "Ready")["reason"] == "Unschedulable" and
                                  env.condition("orphaned", "Ready")["message"], timeout=60, what="attempt 2 waiting")
    finally:
        env.cp.kubectl("create", "-f", "-", input=node_manifest("kwok-node-0"), check=False)

    def back_as_before() -> bool:
        # The node lifecycle controller adds the beta.kubernetes.io/{os,arch} labels a moment after the node
        # is created, so wait for the labels as well as for Ready.
        now = env.cp.kubectl_json("get", "node", "kwok-node-0")
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in now["status"].get("conditions", []))
        return ready and now["metadata"]["labels"] == node["metadata"]["labels"]

    env.cp.wait_for(back_as_before, timeout=60, what="kwok-node-0 Ready again, with its labels")
    [pod2] = env.wait_running_pods("orphaned", 2)
    env.complete_pod(pod2)
    done = env.wait_phase("orphaned", "Succeeded")
    assert done["status"]["attempts"] == 2 and _job_names(env, "orphaned") == ["orphaned-a1", "orphaned-a2"]
    section = "fault: node deleted under a running job"
    figures.add(section, "seconds from node deletion to attempt 2", round(retried, 1))
    figures.add(section, "why attempt 1 failed (Retrying Event)", retry["message"][:200])
    figures.add(section, "attempt 2 while the node was gone", waiting[:200])
    figures.add(section, "outcome", "node re-created as cluster.sh does; attempt 2 Succeeded; 2 Jobs, no duplicate")


@pytest.mark.cluster
def test_apiserver_restarted_while_jobs_run_the_operator_recovers_and_jobs_converge(private_env: Env,
                                                                                    figures) -> None:
    env = private_env
    names = [f"outage-{i}" for i in range(4)]
    for name in names:
        env.apply_job(name, pod_metadata=RUN_FOREVER)
    pods = {name: env.wait_running_pods(name, 1)[0] for name in names}
    for name in names:
        env.wait_phase(name, "Running")
    operator_pid = env.operator.proc.pid
    downtime = restart_apiserver(env.cp)
    started = time.monotonic()
    # After the restart: two finish, one fails retryably (then its attempt 2 finishes), one new job arrives.
    env.complete_pod(pods["outage-0"])
    env.complete_pod(pods["outage-1"])
    env.fail_pod(pods["outage-2"], 75, INTERRUPTED)
    env.apply_job("after-outage")
    [retry] = env.wait_running_pods("outage-2", 2)
    env.complete_pod(retry)
    env.complete_pod(pods["outage-3"])
    for name in names + ["after-outage"]:
        env.wait_phase(name, "Succeeded", timeout=120)
    converged = time.monotonic() - started
    jobs = {name: _job_names(env, name) for name in names + ["after-outage"]}
    assert jobs == {**{n: [f"{n}-a1"] for n in names + ["after-outage"]}, "outage-2": ["outage-2-a1", "outage-2-a2"]}
    assert env.ftj("outage-2")["status"]["checkpoint"]["step"] == 40
    assert env.operator.alive and env.operator.proc.pid == operator_pid  # recovered in-process, never restarted
    log = env.operator.log.read_text()
    section = "fault: kube-apiserver restarted (kill -9) while 4 jobs ran"
    figures.add(section, "seconds the API was unavailable", round(downtime, 1))
    figures.add(section, "seconds until all 5 jobs Succeeded after it came back", round(converged, 1))
    figures.add(section, "operator", "same process throughout; " +
                ("logged the outage" if "Kubernetes API unavailable" in log else "no outage line in its log"))
    figures.add(section, "Jobs", "1 per job, 2 for the one whose attempt failed retryably (no duplicate)")
