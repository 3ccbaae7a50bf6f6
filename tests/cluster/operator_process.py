"""The operator as a separate process against the real control plane, with exactly the RBAC the Helm chart grants
(a token for the chart's ServiceAccount), and the helpers the cluster tests share: applying FineTuneJobs, reading
their children, waiting for phases, and steering KWOK pods through their test hooks.

Used by tests/cluster/test_operator.py and tests/reliability/. Import it as ``operator_process`` from tests/cluster
or as ``cluster.operator_process`` from elsewhere (``tests`` is on pytest's pythonpath).

KWOK hooks (tools/k8s/kwok/stages.yaml), set through spec.podMetadata or by patching a pod:
  label finetune.io/fake-fail=true + annotations finetune.io/fake-exit-code / fake-termination-message: fail
  label finetune.io/fake-run=forever: stay Running until the label goes (then complete) or the pod is deleted
Through the pod's status instead (what a kubelet would write; KWOK leaves a run-forever pod's status alone):
  Env.finish_pod: the trainer exits 0 with a termination message (KWOK's completion stage writes none)
  Env.serve_metrics_from: the pod's IP becomes one on this machine, so the operator's progress scrape reads a
  trainer Telemetry endpoint a test serves there
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pytest
from ports import free_ports

if TYPE_CHECKING:
    from conftest import ControlPlane

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "finetune.io_finetunejobs.yaml"
CHART = REPO / "charts" / "finetune-operator"
IMAGE = "registry.example/finetune-trainer:test"

FAKE_FAIL, FAKE_RUN = "finetune.io/fake-fail", "finetune.io/fake-run"
FAKE_EXIT, FAKE_MESSAGE = "finetune.io/fake-exit-code", "finetune.io/fake-termination-message"
FAKE_REASON, FAKE_DURATION = "finetune.io/fake-reason", "finetune.io/fake-duration"
RUN_FOREVER = {"labels": {FAKE_RUN: "forever"}}
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}


def summary_json(phase: str, reason: str, message: str, exit_code: int, **extra: Any) -> str:
    """A trainer exit summary as the trainer writes it to /dev/termination-log (compact JSON)."""
    return json.dumps({"phase": phase, "reason": reason, "message": message, "exitCode": exit_code, **extra})

class Operator:
    """`python -m finetune_operator.runner` as a child process, stoppable and restartable."""

    def __init__(self, kubeconfig: Path, namespace: str, log: Path, poll_interval: float = 1,
                 settings: dict[str, str] | None = None):
        self.kubeconfig, self.namespace, self.log = kubeconfig, namespace, log
        self.poll_interval = poll_interval
        self.settings = settings or {}  # FINETUNE_* variables (settings.py) beyond the flags below
        self.health_port, self.metrics_port = free_ports(2)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "finetune_operator.runner", "--kubeconfig", str(self.kubeconfig),
               "--namespace", self.namespace, "--trainer-image", IMAGE, "--poll-interval", str(self.poll_interval),
               "--metrics-port", str(self.metrics_port), "--health-port", str(self.health_port)]
        with self.log.open("a") as out:
            out.write(f"\n==== start {time.strftime('%X')}\n")
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                         env={**os.environ, **self.settings})
        deadline = time.monotonic() + 30
        while not self.healthy():
            assert self.proc.poll() is None, f"operator exited: {self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "operator liveness endpoint never answered"
            time.sleep(0.2)

    def healthy(self) -> bool:
        return self._probe("/healthz")

    _healthy = healthy

    def leads(self) -> bool:
        """/readyz: this process holds the Lease and Kopf runs (always the case without leader election)."""
        return self._probe("/readyz")

    def _probe(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}{path}", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies under the operator."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def another(self, identity: str, log: Path) -> Operator:
        """A second process like this one (same identity on the API, same settings) but for the Lease holder's
        identity: a replica of the same release."""
        settings = {**self.settings, "FINETUNE_LEADER_ELECTION_IDENTITY": identity}
        return Operator(self.kubeconfig, self.namespace, log, self.poll_interval, settings)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
            return r.read().decode()


class Env:
    """One watched namespace with its operator: apply FineTuneJobs, read their children, wait, steer KWOK pods."""

    def __init__(self, cp: ControlPlane, namespace: str, operator: Operator, **extra: Any):
        self.cp, self.ns, self.operator = cp, namespace, operator
        # system_ns, release, service_account, kubeconfig (the operator's identity) when built by operator_env
        for key, value in extra.items():
            setattr(self, key, value)

    # -------------------------------------------------------------------------------- objects

    def job_manifest(self, name: str, pod_metadata: dict | None = None, **spec: Any) -> dict:
        body = {
            "model": {"source": "hf://org/tiny-bert", "secretRef": {"name": "hf-token"}},
            "task": "sequence-classification",
            "dataset": {"source": "hf://glue?config=mrpc"},
            "strategy": {"type": "partial", "layers": "last:2"},
            "resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"},
            "output": {"location": f"pvc://ckpt/{name}"},
            "runPolicy": {"backoffLimit": 3},
        }
        body.update(spec)
        if pod_metadata:
            body["podMetadata"] = pod_metadata
        return {"apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob",
                "metadata": {"name": name, "namespace": self.ns}, "spec": body}

    def apply_job(self, name: str, pod_metadata: dict | None = None, **spec: Any) -> None:
        self.cp.apply(self.job_manifest(name, pod_metadata, **spec))

    def ftj(self, name: str) -> dict:
        return self.cp.kubectl_json("get", "finetunejob", name, "-n", self.ns)

    def jobs(self, name: str) -> list[dict]:
        return self.cp.kubectl_json("get", "jobs", "-n", self.ns, "-l", f"finetune.io/job={name}")["items"]

    def pods(self, name: str, attempt: int | None = None) -> list[dict]:
        selector = f"finetune.io/job={name}" + (f",finetune.io/attempt={attempt}" if attempt else "")
        return self.cp.kubectl_json("get", "pods", "-n", self.ns, "-l", selector)["items"]

    def events(self, name: str) -> list[dict]:
        items = self.cp.kubectl_json("get", "events", "-n", self.ns,
                                     "--field-selector", f"involvedObject.kind=FineTuneJob,involvedObject.name={name}")
        return items["items"]

    def condition(self, name: str, ctype: str) -> dict:
        conditions = self.ftj(name).get("status", {}).get("conditions", [])
        return next(c for c in conditions if c["type"] == ctype)

    # -------------------------------------------------------------------------------- waiting

    def wait_phase(self, name: str, phase: str, timeout: float = 60) -> dict:
        def reached() -> dict | None:
            ftj = self.ftj(name)
            return ftj if ftj.get("status", {}).get("phase") == phase else None
        try:
            return self.cp.wait_for(reached, timeout=timeout, what=f"{name} {phase}")
        except AssertionError:
            status = self.ftj(name).get("status")
            raise AssertionError(f"{name} not {phase}: status {json.dumps(status)}\noperator log:\n"
                                 f"{self.operator.log.read_text()[-4000:]}") from None

    def wait_running_pods(self, name: str, attempt: int, count: int = 1, timeout: float = 60) -> list[dict]:
        def running() -> list[dict] | None:
            pods = [p for p in self.pods(name, attempt) if p.get("status", {}).get("phase") == "Running"
                    and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]
            return pods if len(pods) == count else None
        return self.cp.wait_for(running, timeout=timeout, what=f"{count} running pods of {name} attempt {attempt}")

    def patch_pod(self, pod: dict, labels: dict | None = None, annotations: dict | None = None) -> None:
        meta = {"labels": labels or {}, "annotations": annotations or {}}
        self.cp.kubectl("patch", "pod", pod["metadata"]["name"], "-n", self.ns, "--type=merge",
                        "-p", json.dumps({"metadata": meta}))

    def fail_pod(self, pod: dict, code: int, message: str) -> None:
        self.patch_pod(pod, labels={FAKE_FAIL: "true"}, annotations={FAKE_EXIT: str(code), FAKE_MESSAGE: message})

    def complete_pod(self, pod: dict) -> None:
        self.patch_pod(pod, labels={FAKE_RUN: None})

    def _patch_status(self, pod: dict, patch: list[dict]) -> None:
        self.cp.kubectl("patch", "pod", pod["metadata"]["name"], "-n", self.ns, "--subresource=status",
                        "--type=json", "-p", json.dumps(patch))

    def finish_pod(self, pod: dict, message: str) -> None:
        """The running (run-forever) trainer exits 0 leaving ``message`` as its termination message, as the kubelet
        reports it: phase Succeeded, not Ready, the container terminated since it started."""
        current = self.cp.kubectl_json("get", "pod", pod["metadata"]["name"], "-n", self.ns)
        started = current["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        conditions = [{**c, "status": "False"} if c["type"] in ("Ready", "ContainersReady") else c
                      for c in current["status"]["conditions"]]
        self._patch_status(pod, [
            {"op": "replace", "path": "/status/phase", "value": "Succeeded"},
            {"op": "replace", "path": "/status/conditions", "value": conditions},
            {"op": "replace", "path": "/status/containerStatuses/0/ready", "value": False},
            {"op": "replace", "path": "/status/containerStatuses/0/state", "value": {"terminated": {
                "exitCode": 0, "reason": "Completed", "message": message, "startedAt": started,
                "finishedAt": now}}},
        ])

    def serve_metrics_from(self, pod: dict, ip: str = "127.0.0.1") -> None:
        """Give the running pod an IP of this machine: the operator reads rank 0's /metrics there."""
        self._patch_status(pod, [{"op": "replace", "path": "/status/podIP", "value": ip},
                                 {"op": "replace", "path": "/status/podIPs", "value": [{"ip": ip}]}])


def release_manifests(cp: ControlPlane, release: str, system_ns: str, namespace: str) -> str:
    """The chart's RBAC for a per-namespace install watching ``namespace`` (what `helm install` would create).
    Without the chart's CRD (install_crd applies it): these manifests are deleted with `kubectl delete` afterwards,
    which, unlike `helm uninstall`, does not honour the CRD's keep policy, and deleting the CRD would delete every
    FineTuneJob on the plane, other sessions' too."""
    return subprocess.run(
        [str(cp.bin_dir / "helm"), "template", release, str(CHART), "--namespace", system_ns,
         "--set", "crds.install=false", "--set", "rbac.clusterWide=false", "--set", f"namespaces={{{namespace}}}"],
        check=True, capture_output=True, text=True).stdout


def install_crd(cp: ControlPlane) -> None:
    cp.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=fto-tests", "-f", str(CRD))
    cp.kubectl("wait", "--for=condition=Established", "crd/finetunejobs.finetune.io", "--timeout=30s")


@contextlib.contextmanager
def operator_env(cp: ControlPlane, tmp: Path, *, namespace_labels: dict[str, str] | None = None,
                 poll_interval: float = 1, prefix: str = "fto",
                 settings: dict[str, str] | None = None, leader_election: bool = False) -> Iterator[Env]:
    """A fresh namespace (Pod Security "restricted" unless ``namespace_labels`` says otherwise) with a claim
    ``ckpt``, a Secret ``hf-token``, the chart's RBAC for it, and the operator running as the chart's
    ServiceAccount (``settings``: FINETUNE_* variables of its process); everything is deleted afterwards.
    ``leader_election``: on, for the chart's Lease in the release's namespace, as identity ``operator-1``
    (``env.operator.another`` makes a second replica)."""
    if not (cp.bin_dir / "helm").exists():
        pytest.skip(f"helm is not built in {cp.bin_dir} (tools/k8s/build.sh)")
    install_crd(cp)
    suffix = uuid.uuid4().hex[:6]
    release, system_ns = f"{prefix}-{suffix}", cp.create_namespace(f"{prefix}-sys-{suffix}")
    labels = RESTRICTED if namespace_labels is None else namespace_labels
    namespace = cp.create_namespace(f"{prefix}-{suffix}", labels=labels)
    rbac = release_manifests(cp, release, system_ns, namespace)
    pv = f"{prefix}-ckpt-{suffix}"
    service_account = f"{release}-finetune-operator"
    operator = None
    try:
        cp.apply(rbac)
        cp.apply([
            {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
             "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                      "hostPath": {"path": f"/tmp/{pv}"}, "claimRef": {"namespace": namespace, "name": "ckpt"}}},
            {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "ckpt", "namespace": namespace},
             "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                      "resources": {"requests": {"storage": "1Gi"}}}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf-token", "namespace": namespace},
             "stringData": {"HF_TOKEN": "not-a-real-token"}},
        ])
        kubeconfig = cp.mint_kubeconfig(system_ns, service_account, tmp / "operator.kubeconfig")
        if leader_election:  # what the chart's Deployment sets (its pod name is the identity)
            settings = {**(settings or {}), "FINETUNE_LEADER_ELECTION": "true",
                        "FINETUNE_LEADER_ELECTION_NAMESPACE": system_ns,
                        "FINETUNE_LEADER_ELECTION_NAME": service_account,
                        "FINETUNE_LEADER_ELECTION_IDENTITY": "operator-1"}
        operator = Operator(kubeconfig, namespace, tmp / "operator.log", poll_interval=poll_interval,
                            settings=settings)
        operator.start()
        yield Env(cp, namespace, operator, system_ns=system_ns, release=release, service_account=service_account,
                  kubeconfig=kubeconfig)
    finally:
        if operator is not None:
            operator.stop()
            print(f"operator log: {operator.log}")
        cp.delete_namespace(namespace)
        cp.delete_namespace(system_ns)
        cp.kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=false", input=rbac, check=False)
        cp.kubectl("delete", "pv", pv, "--ignore-not-found", "--wait=false", check=False)
