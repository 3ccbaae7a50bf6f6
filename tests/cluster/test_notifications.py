"""Notifications from the operator process on the real control plane to real HTTP receivers on this machine: every
transition that posts an Event reaches the admin's and the job's sinks once per key, signed; a sink that hangs does
not slow a 50-job run (measured against the same run without sinks) and ends in counted drops and a
NotificationFailed Event instead of memory."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import ControlPlane

from finetune_operator.notify.signing import SIGNATURE_HEADER, verify
from notify_receiver import Receiver
from operator_process import RUN_FOREVER, operator_env, summary_json

KEY = b"cluster-notification-key"
INTERRUPTED = summary_json("Interrupted", "Interrupted", "SIGTERM: checkpoint saved", 75)
SMALL = {"gpus": 0, "cpu": "10m", "memory": "16Mi"}  # 50 at once fit the KWOK nodes
JOBS = 50


def _reasons(env, name: str) -> list[str]:
    return sorted(e["reason"] for e in env.events(name))


def _told(receiver: Receiver) -> list[str]:
    return sorted(r.json()["data"]["reason"] for r in receiver.delivered())


@pytest.mark.cluster
def test_every_transition_reaches_the_admins_and_the_jobs_sinks_once_per_key(control_plane: ControlPlane,
                                                                              tmp_path: Path) -> None:
    key = tmp_path / "signing-key"
    key.write_bytes(KEY + b"\n")
    with Receiver() as admin, Receiver() as own:
        settings = {"FINETUNE_NOTIFY_SINKS": json.dumps([{"url": admin.url}]),
                    "FINETUNE_NOTIFY_SIGNING_KEY_FILE": str(key)}
        with operator_env(control_plane, tmp_path, settings=settings) as env:
            env.apply_job("told", pod_metadata=RUN_FOREVER, notify={"sinks": [{"url": own.url, "format": "slack"}]})
            [pod] = env.wait_running_pods("told", 1)
            env.fail_pod(pod, 75, INTERRUPTED)
            [pod2] = env.wait_running_pods("told", 2)
            env.complete_pod(pod2)
            env.wait_phase("told", "Succeeded")
            control_plane.wait_for(lambda: "TrainingSucceeded" in _told(admin)  # own's are Slack messages
                                   and len(admin.delivered()) == len(own.delivered()), timeout=30,
                                   what="the end told to both sinks")
            time.sleep(1)  # and no more
            reasons = _reasons(env, "told")
            # The start is routine (no Event: events.py); the retry and what follows it get Events. The sinks hear
            # of every Event's transition and of every change of phase: the new job's Pending and its Running.
            assert {"Retrying", "TrainingSucceeded"} <= set(reasons) and "AttemptCreated" not in reasons
            told = Counter(_told(admin))
            assert not Counter(reasons) - told
            # (The first Running is told when the operator saw the pod run before it failed: a race here, so the
            # e2e test, whose trainer runs for seconds, is the one that requires it.)
            assert "AttemptCreated" in told and set(told - Counter(reasons)) <= {"AttemptCreated", "TrainerRunning"}
            assert len(admin.received) == len(own.received) == told.total()
            assert len({r.key for r in admin.received}) == told.total()  # one key per transition
            assert {r.key for r in admin.received} == {r.key for r in own.received}
            for received in admin.received + own.received:
                assert verify(KEY, received.body, received.headers[SIGNATURE_HEADER.lower()])
            uid = env.ftj("told")["metadata"]["uid"]
            done = next(r.json() for r in admin.received if r.json()["data"]["reason"] == "TrainingSucceeded")
            assert done["data"]["finetunejob"]["uid"] == uid and done["subject"] == f"{env.ns}/told"
            retry = next(r.json() for r in own.received if "(Retrying)" in r.json()["text"])
            assert retry["text"].startswith(":warning:")


def _run_jobs(cp: ControlPlane, tmp: Path, settings: dict[str, str] | None) -> tuple[float, str, list[dict], str]:
    """Apply JOBS FineTuneJobs at once; seconds until all Succeeded, the operator's metrics, NotificationFailed
    Events, and the namespace."""
    with operator_env(cp, tmp, settings=settings, prefix="fto-n") as env:
        started = time.monotonic()
        cp.apply([env.job_manifest(f"n{i:02d}", resources=SMALL) for i in range(JOBS)])

        def all_succeeded() -> bool:
            items = cp.kubectl_json("get", "finetunejobs", "-n", env.ns)["items"]
            return len(items) == JOBS and all(f.get("status", {}).get("phase") == "Succeeded" for f in items)

        cp.wait_for(all_succeeded, timeout=600, interval=0.25, what=f"{JOBS} FineTuneJobs Succeeded")
        elapsed = time.monotonic() - started
        time.sleep(8)  # give the notifier time to give up on a few (timeout 2 s x 2 tries + 1 s)
        failed = cp.kubectl_json("get", "events", "-n", env.ns, "--field-selector", "reason=NotificationFailed")
        return elapsed, env.operator.metrics(), failed["items"], env.ns


def _counter(metrics: str, namespace: str, result: str) -> float:
    pattern = rf'finetune_operator_notifications_total\{{namespace="{namespace}",result="{result}"\}} (\S+)'
    match = re.search(pattern, metrics)
    return float(match.group(1)) if match else 0.0


@pytest.mark.cluster
def test_a_hanging_sink_does_not_delay_a_50_job_run(control_plane: ControlPlane, tmp_path: Path) -> None:
    baseline, _, _, _ = _run_jobs(control_plane, tmp_path / "none", None)
    with Receiver(hang=True) as stuck:
        settings = {"FINETUNE_NOTIFY_SINKS": json.dumps([{"url": stuck.url}]), "FINETUNE_NOTIFY_TIMEOUT": "2",
                    "FINETUNE_NOTIFY_MAX_TRIES": "2", "FINETUNE_NOTIFY_QUEUE_SIZE": "20"}
        hanging, metrics, failed, namespace = _run_jobs(control_plane, tmp_path / "hanging", settings)
        requests = len(stuck.received)
    print(f"\n{JOBS} jobs apply -> all Succeeded: no sink {baseline:.1f}s, a hanging sink {hanging:.1f}s "
          f"({requests} requests hung, dropped {_counter(metrics, namespace, 'dropped'):.0f}, "
          f"failed {_counter(metrics, namespace, 'failed'):.0f}, {len(failed)} NotificationFailed Events)")
    assert hanging <= 1.5 * baseline + 10, (baseline, hanging)
    assert requests >= 1
    assert _counter(metrics, namespace, "dropped") > 0  # bounded: the backlog beyond 20 was dropped, and counted
    assert _counter(metrics, namespace, "delivered") == 0
    assert failed and "given up after 2 tries" in failed[0]["message"]
    assert "secret-in-url" not in failed[0]["message"]
    queued = re.search(r"^finetune_operator_notifications_queued (\S+)", metrics, re.M)
    assert queued and float(queued.group(1)) <= 20
