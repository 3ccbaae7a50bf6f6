"""`finetune get | describe | logs | wait | delete` against the real API server, as a user runs them (a
subprocess with a kubeconfig), on jobs the operator runs with KWOK pods.

KWOK pods have no logs (no kubelet serves them): here `finetune logs` shows every attempt's header in order and
says why a log is missing; the logs themselves, across a retry on the real node, are tests/e2e/test_cli_logs.py,
and the ordering rules are unit-tested in tests/operator/test_jobview.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import TYPE_CHECKING, Iterator

import pytest

from operator_process import RUN_FOREVER, Env, operator_env

if TYPE_CHECKING:
    from conftest import ControlPlane

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def env(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with operator_env(control_plane, tmp_path_factory.mktemp("cli"), prefix="ftcli") as environment:
        yield environment


def finetune(env: Env, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "finetune_operator.cli", *args, "-n", env.ns,
                           "--kubeconfig", str(env.cp.kubeconfig)], capture_output=True, text=True, timeout=timeout)


def test_get_describe_and_wait_follow_a_job_to_success(env: Env) -> None:
    env.apply_job("follow", pod_metadata=RUN_FOREVER)
    waited = finetune(env, "wait", "follow", "--for=phase=Running", "--timeout=60")
    assert waited.returncode == 0 and waited.stdout.startswith("follow: Running"), waited.stderr
    too_soon = finetune(env, "wait", "follow", "--for=phase=Succeeded", "--timeout=2")
    assert too_soon.returncode == 124 and "timed out after 2s waiting for phase=Succeeded; follow: Running" in \
        too_soon.stderr, too_soon.stderr

    table = finetune(env, "get").stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "PHASE", "PROGRESS"]
    row = next(line for line in table if line.startswith("follow "))
    assert row.split()[1] == "Running" and row.split()[-3] == "1"  # one attempt
    described = finetune(env, "describe", "follow").stdout
    assert "Phase:" in described and "Running" in described and "Model:" in described
    assert "  1  follow-a1  rank 0  pod follow-a1-" in described and "Events:" in described

    [pod] = env.wait_running_pods("follow", 1)
    env.complete_pod(pod)
    done = finetune(env, "wait", "follow", "--timeout=60")  # --for=complete by default
    assert done.returncode == 0 and done.stdout.startswith("follow: Succeeded"), done.stdout + done.stderr
    assert "Succeeded" in finetune(env, "get", "follow").stdout


def test_wait_says_a_failed_job_will_not_succeed(env: Env) -> None:
    env.apply_job("doomed", pod_metadata=RUN_FOREVER, runPolicy={"backoffLimit": 0})
    [pod] = env.wait_running_pods("doomed", 1)
    env.fail_pod(pod, 2, '{"phase": "Failed", "reason": "InvalidLayerSelection", "message": "no such layer", '
                         '"exitCode": 2}')
    waited = finetune(env, "wait", "doomed", "--for=phase=Succeeded", "--timeout=60")
    assert waited.returncode == 1 and "doomed: Failed" in waited.stdout, waited.stdout + waited.stderr
    assert finetune(env, "wait", "doomed", "--for=complete").returncode == 1


def test_logs_walk_every_attempt_in_order(env: Env) -> None:
    env.apply_job("retried", pod_metadata=RUN_FOREVER)
    [first] = env.wait_running_pods("retried", 1)
    env.fail_pod(first, 75, '{"phase": "Interrupted", "reason": "Interrupted", "message": "SIGTERM", "exitCode": 75}')
    [second] = env.wait_running_pods("retried", 2)
    logs = finetune(env, "logs", "retried")
    assert logs.returncode == 0, logs.stderr
    headers = [line for line in logs.stdout.splitlines() if line.startswith("==> ")]
    assert headers == [f"==> attempt 1, rank 0: pod {first['metadata']['name']} (Failed) <==",
                       f"==> attempt 2, rank 0: pod {second['metadata']['name']} (Running) <=="], logs.stdout
    only = finetune(env, "logs", "retried", "--attempt", "2").stdout
    assert "attempt 1" not in only and "attempt 2" in only
    env.complete_pod(second)


def test_logs_follow_a_retry_and_stop_when_the_job_ends(env: Env) -> None:
    env.apply_job("followed", pod_metadata=RUN_FOREVER)
    [first] = env.wait_running_pods("followed", 1)
    follower = subprocess.Popen([sys.executable, "-m", "finetune_operator.cli", "logs", "followed", "-f", "-n", env.ns,
                                 "--kubeconfig", str(env.cp.kubeconfig)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        env.fail_pod(first, 75, '{"phase": "Interrupted", "reason": "Interrupted", "message": "x", "exitCode": 75}')
        [second] = env.wait_running_pods("followed", 2)
        time.sleep(3)
        assert follower.poll() is None, "logs -f stopped while the job still runs"
        env.complete_pod(second)
        out, err = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err
    headers = [line for line in out.splitlines() if line.startswith("==> ")]
    assert headers == [f"==> attempt 1, rank 0: pod {first['metadata']['name']} (Running) <==",
                       f"==> attempt 2, rank 0: pod {second['metadata']['name']} (Running) <=="], out


def test_delete_waits_until_gone_and_missing_jobs_are_errors(env: Env) -> None:
    env.apply_job("gone", pod_metadata=RUN_FOREVER)
    env.wait_running_pods("gone", 1)
    started = time.monotonic()
    deleted = finetune(env, "delete", "gone", "--wait", "--timeout=60")
    assert deleted.returncode == 0 and "gone: deleted" in deleted.stdout, deleted.stdout + deleted.stderr
    assert time.monotonic() - started < 60 and env.cp.kubectl("get", "ftj", "gone", "-n", env.ns,
                                                              check=False).returncode != 0
    missing = finetune(env, "describe", "gone")
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"error: FineTuneJob gone not found in namespace {env.ns}"
    assert finetune(env, "delete", "gone").returncode == 2
    assert finetune(env, "delete", "gone", "--ignore-not-found").returncode == 0
    assert finetune(env, "wait", "gone", "--for=delete", "--timeout=5").returncode == 0
