"""The operator against the real control plane (tools/k8s): a separate process with exactly the RBAC the Helm
chart grants (a token for the chart's ServiceAccount), FineTuneJobs applied with kubectl, KWOK running the pods.

KWOK hooks (tools/k8s/kwok/stages.yaml), set through spec.podMetadata or by patching a pod:
  label finetune.io/fake-fail=true + annotations finetune.io/fake-exit-code / fake-termination-message: fail
  label finetune.io/fake-run=forever: stay Running until the label goes (then complete) or the pod is deleted
Trainer pods run in a namespace that enforces the "restricted" Pod Security profile.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest
import yaml

if TYPE_CHECKING:
    from conftest import ControlPlane

from operator_process import (  # shared with tests/reliability
    FAKE_EXIT,
    FAKE_FAIL,
    FAKE_MESSAGE,
    IMAGE,
    REPO,
    RUN_FOREVER,
    Env,
    operator_env,
    summary_json,
)

INTERRUPTED = summary_json("Interrupted", "Interrupted", "SIGTERM: checkpoint saved", 75,
                           checkpoint={"location": "pvc://ckpt/run/checkpoints/step-40", "step": 40})
BAD_LAYERS = summary_json("Failed", "InvalidLayerSelection", "last:30 asks for 30 blocks; the model has 12", 2,
                          field="strategy.layers")


@pytest.fixture(scope="module")
def env(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with operator_env(control_plane, tmp_path_factory.mktemp("operator")) as environment:
        yield environment


# ------------------------------------------------------------------------------------------ tests

@pytest.mark.cluster
def test_job_runs_to_success_with_the_expected_pod(env: Env) -> None:
    env.apply_job("hello", pod_metadata={"labels": {"team": "nlp"}})
    job = env.cp.wait_for(lambda: env.jobs("hello"), timeout=30, what="Job hello-a1")[0]
    assert job["metadata"]["name"] == "hello-a1"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "FineTuneJob"
    pod_spec = job["spec"]["template"]["spec"]
    [container] = pod_spec["containers"]
    assert container["image"] == IMAGE
    assert container["command"] == ["python", "-m", "finetune_trainer", "--config", "/etc/finetune/config.yaml"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
    assert pod_spec["automountServiceAccountToken"] is False
    assert {"name": "pvc-0", "persistentVolumeClaim": {"claimName": "ckpt"}} in pod_spec["volumes"]
    # The trainer's config travels in the pod template, mounted as the file the command names (downward API).
    config = job["spec"]["template"]["metadata"]["annotations"]["finetune.io/trainer-config"]
    assert yaml.safe_load(config)["output"]["location"] == "pvc://ckpt/hello"  # as written; the trainer maps it
    assert {"name": "config", "downwardAPI": {"items": [{"path": "config.yaml", "fieldRef": {
        "apiVersion": "v1", "fieldPath": "metadata.annotations['finetune.io/trainer-config']"}}],
        "defaultMode": 420}} in pod_spec["volumes"]
    # Admitted under Pod Security "restricted", scheduled on a KWOK node with GPUs, completed.
    ftj = env.wait_phase("hello", "Succeeded")
    [pod] = env.pods("hello")
    assert pod["metadata"]["labels"]["team"] == "nlp"
    assert pod["spec"]["nodeName"].startswith("kwok-node-")
    status = ftj["status"]
    assert status["attempts"] == 1 and status["completionTime"] and status["observedGeneration"] == 1
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Succeeded"]["status"] == conditions["Ready"]["status"] == "True"
    assert conditions["Running"]["status"] == conditions["Failed"]["status"] == "False"
    assert conditions["Succeeded"]["reason"] == "TrainingSucceeded"
    reasons = [e["reason"] for e in env.events("hello")]
    # A run that goes well: only its end is an Event (the routine steps are in status, events.py).
    assert reasons == ["TrainingSucceeded"], reasons
    assert all(e["source"]["component"] == "finetune-operator" for e in env.events("hello"))
    # Kopf keeps no bookkeeping on the object (watch handlers only, handlers.py): nothing in status or annotations.
    assert set(status) <= {"phase", "conditions", "attempts", "startTime", "completionTime", "observedGeneration",
                           "progress", "metrics", "parameters", "checkpoint", "output", "usage"}
    assert not any(k.startswith("finetune.io/") for k in ftj["metadata"].get("annotations") or {})
    assert not ftj["metadata"].get("finalizers")  # deletable while the operator is down or uninstalled
    assert "finetune_operator_attempts_total" in env.operator.metrics()


@pytest.mark.cluster
def test_retryable_failure_creates_attempt_2_which_succeeds(env: Env) -> None:
    env.apply_job("retry", pod_metadata=RUN_FOREVER)
    [pod] = env.wait_running_pods("retry", 1)
    env.fail_pod(pod, 75, INTERRUPTED)
    [pod2] = env.wait_running_pods("retry", 2)
    ftj = env.ftj("retry")
    assert ftj["status"]["attempts"] == 2
    assert ftj["status"]["checkpoint"] == {"location": "pvc://ckpt/run/checkpoints/step-40", "step": 40}
    env.complete_pod(pod2)
    ftj = env.wait_phase("retry", "Succeeded")
    assert [j["metadata"]["name"] for j in env.jobs("retry")] == ["retry-a1", "retry-a2"]
    retrying = [e for e in env.events("retry") if e["reason"] == "Retrying"]
    assert len(retrying) == 1 and retrying[0]["type"] == "Warning"
    assert "attempt 1 failed (Interrupted: SIGTERM: checkpoint saved)" in retrying[0]["message"]


@pytest.mark.cluster
def test_permanent_failure_ends_failed_at_once_with_the_trainers_reason(env: Env) -> None:
    env.apply_job("bad", pod_metadata={"labels": {FAKE_FAIL: "true"},
                                       "annotations": {FAKE_EXIT: "2", FAKE_MESSAGE: BAD_LAYERS}})
    env.wait_phase("bad", "Failed")
    failed = env.condition("bad", "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "InvalidLayerSelection")
    assert failed["message"] == "spec.strategy.layers: last:30 asks for 30 blocks; the model has 12"
    time.sleep(2)  # a retry, if there were one, would show up as a second Job by now
    assert [j["metadata"]["name"] for j in env.jobs("bad")] == ["bad-a1"]
    assert env.ftj("bad")["status"]["attempts"] == 1


@pytest.mark.cluster
def test_backoff_limit_is_honoured(env: Env) -> None:
    env.apply_job("flaky", runPolicy={"backoffLimit": 1},
                  pod_metadata={"labels": {FAKE_FAIL: "true"},
                                "annotations": {FAKE_EXIT: "75", FAKE_MESSAGE: INTERRUPTED}})
    env.wait_phase("flaky", "Failed")
    failed = env.condition("flaky", "Failed")
    assert failed["reason"] == "BackoffLimitExceeded" and "backoffLimit: 1" in failed["message"]
    assert [j["metadata"]["name"] for j in env.jobs("flaky")] == ["flaky-a1", "flaky-a2"]


@pytest.mark.cluster
def test_deadline_fails_the_job_and_ttl_deletes_it(env: Env) -> None:
    env.apply_job("slow", pod_metadata=RUN_FOREVER,
                  runPolicy={"activeDeadlineSeconds": 3, "ttlSecondsAfterFinished": 2})
    assert env.cp.wait_for(lambda: env.jobs("slow"), timeout=30)[0]["spec"]["activeDeadlineSeconds"] <= 3
    env.wait_phase("slow", "Failed", timeout=30)
    failed = env.condition("slow", "Failed")
    assert failed["reason"] == "DeadlineExceeded" and "activeDeadlineSeconds" in failed["message"]
    env.cp.wait_for(lambda: env.cp.kubectl("get", "finetunejob", "slow", "-n", env.ns, check=False).returncode != 0,
                    timeout=30, what="slow deleted after its TTL")


@pytest.mark.cluster
def test_suspend_then_resume(env: Env) -> None:
    env.apply_job("pause", pod_metadata=RUN_FOREVER)
    env.wait_running_pods("pause", 1)
    env.wait_phase("pause", "Running")
    patch = lambda suspend: env.cp.kubectl(  # noqa: E731
        "patch", "finetunejob", "pause", "-n", env.ns, "--type=merge",
        "-p", json.dumps({"spec": {"runPolicy": {"suspend": suspend}}}))
    patch(True)
    env.wait_phase("pause", "Suspended")
    assert env.jobs("pause")[0]["spec"]["suspend"] is True
    env.cp.wait_for(lambda: not env.pods("pause"), timeout=30, what="suspended pods gone")
    assert env.condition("pause", "Suspended")["status"] == "True"
    patch(False)
    [pod] = env.wait_running_pods("pause", 1)
    env.wait_phase("pause", "Running")
    assert env.jobs("pause")[0]["spec"]["suspend"] is False
    assert [j["metadata"]["name"] for j in env.jobs("pause")] == ["pause-a1"]  # resumed, not a new attempt
    env.complete_pod(pod)
    env.wait_phase("pause", "Succeeded")
    reasons = [e["reason"] for e in env.events("pause")]
    assert "Suspended" in reasons and "Resumed" in reasons


@pytest.mark.cluster
def test_operator_killed_mid_reconcile_restarts_without_duplicates(env: Env) -> None:
    env.operator.kill()
    env.apply_job("crash", pod_metadata=RUN_FOREVER)
    env.operator.start()
    env.cp.wait_for(lambda: env.jobs("crash"), timeout=30, what="Job crash-a1")
    env.operator.kill()  # right after creating the attempt, before or while writing the status
    env.operator.start()
    [pod] = env.wait_running_pods("crash", 1)
    env.wait_phase("crash", "Running")
    assert [j["metadata"]["name"] for j in env.jobs("crash")] == ["crash-a1"]
    # The attempt fails while the operator is down; the restarted operator retries it exactly once.
    env.operator.kill()
    env.fail_pod(pod, 75, INTERRUPTED)
    env.cp.wait_for(lambda: any(c.get("type") == "Failed" and c.get("status") == "True"
                                for c in env.jobs("crash")[0].get("status", {}).get("conditions", [])),
                    timeout=30, what="Job crash-a1 Failed")
    env.operator.start()
    [pod2] = env.wait_running_pods("crash", 2)
    assert [j["metadata"]["name"] for j in env.jobs("crash")] == ["crash-a1", "crash-a2"]
    assert env.ftj("crash")["status"]["attempts"] == 2
    env.complete_pod(pod2)
    env.wait_phase("crash", "Succeeded")


@pytest.mark.cluster
def test_multi_node_runs_an_indexed_job_and_delete_cascades(env: Env) -> None:
    env.apply_job("gang", pod_metadata=RUN_FOREVER, resources={"nodes": 2, "gpus": 4, "cpu": "2", "memory": "2Gi"})
    pods = env.wait_running_pods("gang", 1, count=2)
    env.wait_phase("gang", "Running")
    [job] = env.jobs("gang")
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    service = env.cp.kubectl_json("get", "service", "gang-a1", "-n", env.ns)
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    by_index = {p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: p for p in pods}
    assert sorted(by_index) == ["0", "1"]
    for index, pod in by_index.items():
        assert pod["spec"]["hostname"] == f"gang-a1-{index}" and pod["spec"]["subdomain"] == "gang-a1"
        command = pod["spec"]["containers"][0]["command"]
        assert command[:3] == ["torchrun", "--nnodes=2", "--nproc-per-node=4"]
        assert "--node-rank=$(JOB_COMPLETION_INDEX)" in command and "--master-addr=gang-a1-0.gang-a1" in command
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    # The rendezvous name resolves to rank 0: the headless Service has both ranks as endpoints.
    slices = env.cp.kubectl_json("get", "endpointslices", "-n", env.ns, "-l", "kubernetes.io/service-name=gang-a1")
    hostnames = {e.get("hostname") for s in slices["items"] for e in s.get("endpoints") or []}
    assert {"gang-a1-0", "gang-a1-1"} <= hostnames

    env.cp.kubectl("delete", "finetunejob", "gang", "-n", env.ns, "--wait=true", "--timeout=60s")

    def gone() -> bool:
        selector = "finetune.io/job=gang"
        kinds = "jobs,pods,configmaps,services"
        return not env.cp.kubectl_json("get", kinds, "-n", env.ns, "-l", selector)["items"]
    env.cp.wait_for(gone, timeout=60, what="children of gang garbage-collected")


# ------------------------------------------------------------------------------------------ contract

def _tiny_models():
    """tests/tiny_models.py, loaded by path so this test does not depend on how pytest sets sys.path."""
    spec = importlib.util.spec_from_file_location("tiny_models", REPO / "tests" / "tiny_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_contract_rendered_pod_trains_a_tiny_model_and_its_summary_becomes_the_status(tmp_path: Path) -> None:
    """The contract between operator and trainer, without a cluster: the command and the config file the operator
    renders, run as a process with the pod's environment, train to completion; the termination message the
    trainer leaves is what the operator turns into a Succeeded status. Only the volume root differs from a pod
    (pvc://claim/path lives under tmp_path instead of /mnt/pvc)."""
    pytest.importorskip("torch")
    try:
        import finetune_trainer.train  # noqa: F401
    except ImportError as error:
        pytest.skip(f"the trainer engine does not import yet: {error}")
    from finetune_operator.api import FineTuneJob
    from finetune_operator.lifecycle import decide
    from finetune_operator.observed import observe
    from finetune_operator.render import CONFIG_PATH, build_attempt
    from finetune_operator.settings import Settings
    from finetune_operator.status import next_status

    tiny = _tiny_models()
    volumes = tmp_path / "pvc"
    tiny.save_tiny_model("bert", "AutoModelForSequenceClassification", volumes / "models" / "tiny-bert", num_labels=2)
    tiny.write_sentiment_csv(volumes / "data" / "reviews" / "train.csv", n=32)
    tiny.write_sentiment_csv(volumes / "data" / "reviews" / "validation.csv", n=16, seed=1)
    ftj = FineTuneJob.model_validate({
        "apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": "contract", "namespace": "ml", "uid": "u-contract", "generation": 1},
        "spec": {
            "model": {"source": "pvc://models/tiny-bert"},
            "task": "sequence-classification",
            "dataset": {"source": "pvc://data/reviews", "columns": {"text": ["text"], "label": "label"},
                        "maxLength": 32},
            "strategy": {"type": "partial", "layers": "last:1"},
            "training": {"epochs": 1, "batchSize": 8, "learningRate": 1e-3},
            "output": {"location": "pvc://ckpt/contract"},
        },
    })
    [pod_job] = build_attempt(ftj, 1, Settings(pvc_mount_root=str(volumes)))
    container = pod_job["spec"]["template"]["spec"]["containers"][0]
    config_file = tmp_path / "etc" / "config.yaml"
    config_file.parent.mkdir()
    config_file.write_text(pod_job["spec"]["template"]["metadata"]["annotations"]["finetune.io/trainer-config"])
    assert container["command"][0] == "python"
    command = [sys.executable, *container["command"][1:]]
    command[command.index(CONFIG_PATH)] = str(config_file)
    termination_log = tmp_path / "termination-log"
    termination_log.touch()  # the kubelet provides the file; the trainer writes it only if it exists
    env = {**os.environ, **{e["name"]: e["value"] for e in container["env"] if "value" in e},
           "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "FINETUNE_TERMINATION_LOG": str(termination_log)}

    proc = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    message = termination_log.read_text()
    pod = {"metadata": {"name": "contract-a1-0-x", "labels": {"finetune.io/attempt": "1"}},
           "status": {"phase": "Succeeded", "containerStatuses": [{"name": "trainer", "state": {"terminated": {
               "exitCode": 0, "reason": "Completed", "message": message}}}]}}
    done = {**pod_job, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    resource = {**ftj.model_dump(by_alias=True, exclude_none=True, mode="json"),
                "status": {"phase": "Running", "attempts": 1, "startTime": "2025-01-01T00:00:00Z"}}
    observed = observe(resource, [done], [pod], datetime.now(timezone.utc))
    decision = decide(observed)
    status = next_status(observed, decision)
    assert (decision.phase.value, decision.reason) == ("Succeeded", "TrainingSucceeded")
    # Status names the locations as the user wrote them (pvc://claim/...), not the pod's mount paths.
    output = status["output"]["location"]
    assert output.startswith("pvc://ckpt/contract/")
    assert (volumes / output.removeprefix("pvc://")).is_dir()
    assert status["checkpoint"]["location"].startswith("pvc://ckpt/contract/")
    assert status["progress"]["percent"] == 100.0 and status["progress"]["step"] == status["progress"]["totalSteps"]
    assert "trainLoss" in status["metrics"]
    assert 0 < status["parameters"]["trainable"] < status["parameters"]["total"]
    assert status["tracking"] == {"tensorboard": "pvc://ckpt/contract/tensorboard"}  # the default tracking
    assert any((volumes / "ckpt" / "contract" / "tensorboard").glob("events.out.tfevents.*"))
