"""End to end on the real node: the operator, installed by the chart and running in-cluster on its own
ServiceAccount, turns FineTuneJobs into trainer pods that really train (kubelet, containerd, runc, CNI) in a
namespace enforcing Pod Security ``restricted``, with a tiny model and data on a local PersistentVolume.

What a kubelet does and KWOK only pretends: the read-only root filesystem, the termination message, SIGTERM on
deletion inside the grace period, Secret env, volume permissions, pod DNS for the multi-node rendezvous, and the
reasons a pod does not start.
"""

from __future__ import annotations

import re
import subprocess
import time
from typing import Any

import pytest

from e2e.conftest import ON_REAL_NODE, Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

SECRET_VALUE = "e2e-secret-value-7f3c"


def spec(model: str = "bert", data: str = "reviews", *, epochs: int = 1, batch: int = 8, cpu: str = "1",
         output: str | None = None, **extra: Any) -> dict[str, Any]:
    """A FineTuneJob spec on the e2e volume (pvc://e2e-data), placed on the real node."""
    return {
        "model": {"source": f"pvc://e2e-data/models/{model}"},
        "task": "sequence-classification",
        "dataset": {"source": f"pvc://e2e-data/data/{data}", "columns": {"text": ["text"], "label": "label"},
                    "maxLength": 32},
        "strategy": {"type": "partial", "layers": "last:2"},
        "training": {"epochs": epochs, "batchSize": batch, "learningRate": 1e-3, "logEvery": 1},
        "resources": {"cpu": cpu, "memory": "2Gi", **ON_REAL_NODE},
        "output": {"location": output or "pvc://e2e-data/out/" + extra.pop("name", "job"), "keepCheckpoints": 2},
        "runPolicy": {"backoffLimit": 2},
        **extra,
    }


def test_operator_runs_in_cluster_with_the_charts_service_account(cluster: Cluster) -> None:
    pods = cluster.cp.kubectl_json("get", "pods", "-n", cluster.system_ns,
                                   "-l", "app.kubernetes.io/name=finetune-operator")["items"]
    assert len(pods) == 2  # the chart's default: a leader and a standby
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert pod["spec"]["serviceAccountName"] == f"{cluster.release}-finetune-operator"
        assert pod["spec"]["nodeName"] and pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"]
        log = cluster.cp.kubectl("logs", "-n", cluster.system_ns, pod["metadata"]["name"]).stdout
        assert "Forbidden" not in log and "Traceback" not in log, log[-3000:]
    # `helm test`: a pod reads the operator's metrics through its Service (cluster DNS, kube-proxy, the bridge).
    test = subprocess.run([str(cluster.cp.bin_dir / "helm"), "--kubeconfig", str(cluster.cp.kubeconfig), "test",
                           cluster.release, "--namespace", cluster.system_ns, "--timeout", "3m"],
                          capture_output=True, text=True, timeout=240)
    assert test.returncode == 0 and "Succeeded" in test.stdout, test.stdout + test.stderr


def test_job_trains_in_a_pod_and_status_shows_pvc_locations(cluster: Cluster) -> None:
    cp = cluster.cp
    cp.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf-token", "namespace": cluster.ns},
              "stringData": {"FTO_E2E_TOKEN": SECRET_VALUE}})
    body = spec("bert-wide", "big", batch=4, name="train")
    body["model"]["secretRef"] = {"name": "hf-token"}
    cluster.apply_job("train", **body)

    # While it runs: progress moves in status (scraped from the live pod by the in-cluster operator).
    steps: list[int] = []

    def running_pod() -> dict[str, Any] | None:
        status = cluster.status("train")
        step = (status.get("progress") or {}).get("step")
        if status.get("phase") == "Running" and step and (not steps or step != steps[-1]):
            steps.append(step)
        if status.get("phase") in ("Succeeded", "Failed"):
            raise AssertionError(f"finished before it was seen running twice: {cluster.diagnose('train')}")
        pods = [p for p in cluster.pods("train") if p["status"].get("phase") == "Running"]
        return pods[0] if len(steps) >= 2 and pods else None

    pod = cp.wait_for(running_pod, timeout=300, interval=0.5, what="two progress updates of a running pod")
    name = pod["metadata"]["name"]
    # In the running container: the Secret's env, no ServiceAccount token, a read-only root filesystem.
    exec_ = ("exec", "-n", cluster.ns, name, "-c", "trainer", "--")
    assert cp.kubectl(*exec_, "printenv", "FTO_E2E_TOKEN").stdout.strip() == SECRET_VALUE
    token = cp.kubectl(*exec_, "ls", "/var/run/secrets/kubernetes.io/serviceaccount", check=False)
    assert token.returncode != 0 and "No such file" in token.stderr
    write = cp.kubectl(*exec_, "touch", "/opt/written-by-the-trainer", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr
    assert cp.kubectl(*exec_, "id", "-u").stdout.strip() == "1000"

    status = cluster.wait_phase("train", ("Succeeded", "Failed"), timeout=600)
    assert status["phase"] == "Succeeded", cluster.diagnose("train")
    assert steps == sorted(steps) and steps[0] < status["progress"]["totalSteps"]
    # Locations as the user wrote them, and the files on the volume behind them.
    model = status["output"]["location"]
    assert model.startswith("pvc://e2e-data/out/train/"), status
    assert status["checkpoint"]["location"].startswith("pvc://e2e-data/out/train/"), status
    on_volume = cluster.volume / model.removeprefix("pvc://e2e-data/")
    assert (on_volume / "config.json").is_file() and any(on_volume.glob("*.safetensors"))
    assert status["progress"]["step"] == status["progress"]["totalSteps"] and status["metrics"]["trainLoss"] > 0
    assert SECRET_VALUE not in str(status) + str(cluster.events("train"))


def test_lora_job_trains_through_the_fused_layers_in_a_pod_and_saves_its_adapter(cluster: Cluster) -> None:
    """The CPU path of a LoRA job (lora_fused.py) in the trainer image, not only in local processes."""
    body = spec(name="lora", strategy={"type": "lora", "lora": {"r": 4}})
    cluster.apply_job("lora", **body)
    status = cluster.wait_phase("lora", ("Succeeded", "Failed"), timeout=600)
    assert status["phase"] == "Succeeded", cluster.diagnose("lora")
    [pod] = cluster.pods("lora")
    log = cluster.logs(pod["metadata"]["name"])
    fused = re.search(r"LoRA: (\d+) adapted linear layers fused with their base", log)
    assert fused and int(fused.group(1)) > 0, log[-3000:]
    on_volume = cluster.volume / status["output"]["location"].removeprefix("pvc://e2e-data/")
    assert (on_volume / "adapter_config.json").is_file() and (on_volume / "adapter_model.safetensors").is_file()
    assert status["metrics"]["trainLoss"] > 0


def test_deleted_pod_saves_a_checkpoint_and_the_next_attempt_resumes(cluster: Cluster) -> None:
    cluster.apply_job("preempt", **spec("bert-wide", "big", batch=4, name="preempt"))
    planned = -(-1600 // 4)  # one epoch of data/big (its eval split is a file of its own) in batches of 4

    def mid_epoch() -> dict[str, Any] | None:
        progress = cluster.status("preempt").get("progress") or {}
        pods = [p for p in cluster.pods("preempt", 1) if p["status"].get("phase") == "Running"]
        return pods[0] if pods and 5 <= (progress.get("step") or 0) < planned // 2 else None

    pod = cluster.cp.wait_for(mid_epoch, timeout=300, interval=0.5, what="attempt 1 mid-epoch")
    pod_step = cluster.status("preempt")["progress"]["step"]
    deleted_at = time.monotonic()
    # The kubelet sends SIGTERM; the trainer saves a checkpoint inside the grace period and exits 75.
    cluster.cp.kubectl("delete", "pod", "-n", cluster.ns, pod["metadata"]["name"], "--wait=false")
    status = cluster.wait_phase("preempt", ("Succeeded", "Failed"), timeout=600)
    assert status["phase"] == "Succeeded", cluster.diagnose("preempt")
    assert status["attempts"] == 2
    retry = next(e for e in cluster.events("preempt") if e["reason"] == "Retrying")
    # Retried: a retryable stop. Its reason is the trainer's "Interrupted" when the operator read the termination
    # message before the deleted pod was gone, else the Job's condition (seen under load; the checkpoint and the
    # resume below are what prove the SIGTERM path).
    assert "attempt 1 failed" in retry["message"], retry["message"]
    [second] = cluster.pods("preempt", 2)
    log = cluster.logs(second["metadata"]["name"])
    resumed = re.search(r"resumed from \S+: step (\d+)/(\d+)", log)
    assert resumed, log[-3000:]
    step, total = int(resumed.group(1)), int(resumed.group(2))
    assert 0 < step < total == planned
    # Every planned optimizer step ran once: the resumed attempt did not start over nor skip ahead.
    assert status["progress"]["step"] == status["progress"]["totalSteps"] == planned
    checkpoint = status["checkpoint"]
    assert checkpoint["step"] == planned and checkpoint["location"].startswith("pvc://e2e-data/out/preempt/")
    print(f"\npod deleted at step ~{pod_step}; attempt 2 resumed at step {step}/{total} and succeeded "
          f"{time.monotonic() - deleted_at:.0f}s after the deletion; {retry['message']}")


def test_bad_layer_selection_fails_with_the_trainers_reason(cluster: Cluster) -> None:
    body = spec(name="badlayers")
    body["strategy"] = {"type": "partial", "layers": "last:30"}
    cluster.apply_job("badlayers", **body)
    status = cluster.wait_phase("badlayers", ("Failed", "Succeeded"), timeout=300)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (status["phase"], ready["reason"]) == ("Failed", "InvalidLayerSelection"), cluster.diagnose("badlayers")
    assert "spec.strategy.layers" in ready["message"] and "30" in ready["message"], ready
    assert status["attempts"] == 1  # permanent: not retried


@pytest.mark.parametrize("case, change, reason, words", [
    ("noimage", {"image": "localhost/finetune-trainer:does-not-exist"}, "ImagePullFailed", "ErrImageNeverPull"),
    ("nosecret", {"model": {"source": "pvc://e2e-data/models/bert", "secretRef": {"name": "no-such-secret"}}},
     "ContainerCannotStart", 'secret "no-such-secret" not found'),
    ("nogpu", {"resources": {"gpus": 1, **ON_REAL_NODE}}, "Unschedulable", "Insufficient nvidia.com/gpu"),
])
def test_a_pod_that_cannot_run_says_why_within_a_minute(cluster: Cluster, case, change, reason, words) -> None:
    cluster.apply_job(case, **{**spec(name=case), **change})
    started = time.monotonic()
    try:
        ready = cluster.cp.wait_for(lambda: (c := cluster.ready_condition(case)).get("reason") == reason and c,
                                    timeout=90, interval=1, what=f"{case}: reason {reason}")
    except AssertionError as error:
        raise AssertionError(f"{error}\n{cluster.diagnose(case)}") from None
    took = time.monotonic() - started
    assert words in ready["message"] and cluster.status(case)["phase"] == "Pending", ready
    event = cluster.cp.wait_for(lambda: [e for e in cluster.events(case) if e["reason"] == reason], timeout=30)
    assert event[0]["type"] == "Warning"
    print(f"\n{case}: {reason} after {took:.0f}s: {ready['message']}")
    cluster.cp.kubectl("delete", "finetunejob", case, "-n", cluster.ns, "--wait=false")


def test_two_cpu_nodes_rendezvous_and_train_one_model(cluster: Cluster) -> None:
    body = spec(name="twonodes", cpu="500m")
    body["resources"]["nodes"] = 2
    cluster.apply_job("twonodes", **body)
    status = cluster.wait_phase("twonodes", ("Succeeded", "Failed"), timeout=600)
    assert status["phase"] == "Succeeded", cluster.diagnose("twonodes")
    pods = cluster.pods("twonodes", 1)
    assert len(pods) == 2 and {p["status"]["phase"] for p in pods} == {"Succeeded"}
    # One model trained by two ranks: each rank ran half of the epoch's 8 batches (64 rows, 8 per batch).
    assert status["progress"]["totalSteps"] == 4, status["progress"]
    assert status["output"]["location"].startswith("pvc://e2e-data/out/twonodes/")
