"""The Helm chart against the real control plane (tools/k8s): the apiserver accepts what `helm template` renders,
and `helm install` grants enough for the operator to run an example FineTuneJob to Succeeded.

The operator runs as a local process, not in the Deployment's pod: the plane's nodes are KWOK's, which fake
pod lifecycles without running containers. The process gets exactly what the pod would: the Deployment's
environment and a token of the chart's ServiceAccount.

(Named test_chart_cluster.py, not test_chart.py: pytest's default import mode refuses two test modules with the
same basename, and tests/chart/test_chart.py exists.)
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pytest
import yaml

from helm_chart import ALL_ON, CHART, REPO, helm, helm_binary, render_text, require_tool
from ports import free_ports
from prometheus_live import bin_dir as prometheus_bin_dir

if TYPE_CHECKING:
    from conftest import ControlPlane

pytestmark = pytest.mark.cluster

CRD = REPO / "crds" / "finetune.io_finetunejobs.yaml"
CRD_NAME = "finetunejobs.finetune.io"
EXAMPLE = REPO / "examples" / "cluster-llama-2gpu.yaml"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}
TRAINER_IMAGE = ("registry.example/finetune-trainer", "test")


def _ensure_monitoring_crds(cp: ControlPlane) -> None:
    """prometheus-operator's own CRDs for the kinds the chart ships (tools/prometheus/build.sh copies them from its Go
    module), so the server-side dry run checks the monitors and the rule against the real schemas. Installed where
    absent or where an older session left a schema-less stand-in (labelled finetune.io/test-stand-in); a CRD from
    anyone else is never replaced. Left in place: other sessions sharing the plane may be using them."""
    crds = require_tool(prometheus_bin_dir().parent / "crds", "tools/prometheus/build.sh")
    for path in sorted(crds.glob("monitoring.coreos.com_*.yaml")):
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        found = cp.kubectl("get", "crd", name, "-o", "jsonpath={.metadata.labels.finetune\\.io/test-stand-in}",
                           check=False)
        if found.returncode != 0 or found.stdout == "true":
            cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
            cp.kubectl("label", "crd", name, "finetune.io/test-stand-in-")
        cp.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=30s")


@pytest.fixture
def namespaces(control_plane: ControlPlane) -> Iterator[list[str]]:
    """Unique, Pod-Security-restricted namespaces on demand (append to the list), deleted afterwards."""
    created: list[str] = []
    yield created
    for name in created:
        control_plane.delete_namespace(name)


def _new_namespace(cp: ControlPlane, created: list[str], prefix: str) -> str:
    name = cp.create_namespace(f"{prefix}-{uuid.uuid4().hex[:6]}", labels=RESTRICTED)
    created.append(name)
    return name


# ------------------------------------------------------------------------------------------ dry run

def _pods_of(objects: list[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    """The pod templates of the rendered workloads as Pods, so Pod Security admission judges them (it only warns
    about a Deployment's or Job's template; it refuses a Pod)."""
    pods = []
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job"):
            template = copy.deepcopy(obj["spec"]["template"])
            template["metadata"]["name"] = f"{obj['metadata']['name']}-psa-check"
            template["metadata"]["namespace"] = namespace
            for ref in ("serviceAccountName", "priorityClassName"):  # objects the dry run did not create
                template["spec"].pop(ref, None)
            pods.append({"apiVersion": "v1", "kind": "Pod", **template})
    return pods


@pytest.mark.parametrize("name", ["default", "all-on"])
def test_rendered_chart_passes_server_side_dry_run(name: str, control_plane: ControlPlane,
                                                   namespaces: list[str]) -> None:
    cp = control_plane
    release_ns = _new_namespace(cp, namespaces, "ftop-dry")
    values, sets = [], []
    if name == "all-on":
        _ensure_monitoring_crds(cp)
        # The file's namespaces, made unique here: the dry run needs them to exist, and the plane is shared.
        team_a, team_b, grafana = (_new_namespace(cp, namespaces, p) for p in ("ftop-team-a", "ftop-team-b", "ftop-mon"))
        values, sets = [ALL_ON], [f"namespaces={{{team_a},{team_b}}}", f"dashboard.namespace={grafana}"]
    text = render_text(*values, sets=tuple(sets), release="fto-dry", namespace=release_ns)
    objects = [o for o in yaml.safe_load_all(text) if o]
    proc = cp.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=text, check=False)
    assert proc.returncode == 0, f"apiserver refused the chart ({name}):\n{proc.stderr}"
    applied = proc.stdout.splitlines()
    assert len(applied) == len(objects) and all("(server dry run)" in line for line in applied), proc.stdout
    pods = yaml.safe_dump_all(_pods_of(objects, release_ns))
    psa = cp.kubectl("apply", "--dry-run=server", "-f", "-", input=pods, check=False)
    assert psa.returncode == 0 and "Warning" not in psa.stderr, f"Pod Security 'restricted' refused:\n{psa.stderr}"


# ------------------------------------------------------------------------------------------ install
class OperatorProcess:
    """`python -m finetune_operator.runner` with the chart Deployment's environment and ServiceAccount token."""

    def __init__(self, env: dict[str, str], kubeconfig: Path, log: Path):
        # The Deployment's ports are overridden by flags (flags win over FINETUNE_*): tests share this machine.
        self.health_port, self.metrics_port = free_ports(2)
        cmd = [sys.executable, "-m", "finetune_operator.runner", "--kubeconfig", str(kubeconfig),
               "--metrics-port", str(self.metrics_port), "--health-port", str(self.health_port)]
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=REPO)
        deadline = time.monotonic() + 60
        while not self._healthy():
            assert self.proc.poll() is None, f"operator exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"operator never answered /healthz:\n{log.read_text()[-3000:]}"
            time.sleep(0.3)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _example_job(namespace: str) -> dict[str, Any]:
    """examples/cluster-llama-2gpu.yaml, minus what the plane cannot satisfy: KWOK nodes carry no GPU product
    label (nodeSelector), and there is no Kueue to admit a queued job (queueName keeps it suspended)."""
    job = yaml.safe_load(EXAMPLE.read_text())
    job["metadata"]["namespace"] = namespace
    job["spec"]["resources"].pop("nodeSelector")
    job["spec"].pop("queueName")
    return job


def _volumes_for(namespace: str, claims: list[str], suffix: str) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for claim in claims:
        pv = f"ftop-{claim}-{suffix}"
        objects += [
            {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
             "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                      "hostPath": {"path": f"/tmp/{pv}"}, "claimRef": {"namespace": namespace, "name": claim}}},
            {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": namespace},
             "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                      "resources": {"requests": {"storage": "1Gi"}}}},
        ]
    return objects


def _adopt_crd(cp: ControlPlane, release: str, namespace: str) -> None:
    """Let this release take over the plane's CRD (other tests apply crds/ directly), as docs/cluster.md tells
    users who applied the CRD by hand before installing the chart. The CRD is never deleted: other sessions
    share it, and the chart keeps it on uninstall anyway."""
    cp.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=fto-tests", "-f", str(CRD))
    cp.kubectl("label", "--overwrite", "crd", CRD_NAME, "app.kubernetes.io/managed-by=Helm")
    cp.kubectl("annotate", "--overwrite", "crd", CRD_NAME, f"meta.helm.sh/release-name={release}",
               f"meta.helm.sh/release-namespace={namespace}")


def _release_crd(cp: ControlPlane) -> None:
    """Leave the shared CRD as the other tests expect it: no release owns it."""
    cp.kubectl("annotate", "crd", CRD_NAME, "meta.helm.sh/release-name-", "meta.helm.sh/release-namespace-",
               "helm.sh/resource-policy-", check=False)
    cp.kubectl("label", "crd", CRD_NAME, "app.kubernetes.io/managed-by-", check=False)


def test_helm_install_grants_enough_to_run_an_example_job(control_plane: ControlPlane, namespaces: list[str],
                                                          tmp_path: Path) -> None:
    cp = control_plane
    helm_binary()  # skip (or fail, under FTO_REQUIRE_CLUSTER) before touching the plane if helm is missing
    suffix = uuid.uuid4().hex[:6]
    release = f"ftop-{suffix}"
    system_ns = _new_namespace(cp, namespaces, "ftop-chart")
    jobs_ns = _new_namespace(cp, namespaces, "ftop-chart-jobs")
    _adopt_crd(cp, release, system_ns)
    volumes = _volumes_for(jobs_ns, ["datasets", "checkpoints"], suffix)
    operator = None
    installed = False
    try:
        install = helm(
            "install", release, str(CHART), "--namespace", system_ns, "--wait", "--timeout", "120s",
            "--set", "rbac.clusterWide=false", "--set", f"namespaces={{{jobs_ns}}}",
            "--set", f"trainer.image.repository={TRAINER_IMAGE[0]}", "--set", f"trainer.image.tag={TRAINER_IMAGE[1]}",
            env=cp.env)
        installed = True
        assert f"It watches FineTuneJobs in: {jobs_ns}." in install.stdout and "kubectl get ftj" in install.stdout
        crd = cp.kubectl_json("get", "crd", CRD_NAME)
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == release

        # The Deployment's pod was admitted under Pod Security "restricted" (KWOK then reports it Ready), and
        # the `helm test` Job was too; KWOK completes its pod without running the check itself.
        selector = f"app.kubernetes.io/instance={release}"
        [deployment] = cp.kubectl_json("get", "deployments", "-n", system_ns, "-l", selector)["items"]
        assert deployment["status"].get("availableReplicas") == 2  # a leader and a standby
        tested = helm("test", release, "--namespace", system_ns, "--timeout", "90s", env=cp.env)
        assert "Phase:          Succeeded" in tested.stdout, tested.stdout
        cp.kubectl("get", "configmap", f"{release}-finetune-operator-dashboard", "-n", system_ns)

        pod_spec = deployment["spec"]["template"]["spec"]
        # The one variable from the downward API, the Lease holder's identity, is the pod's name.
        env = {e["name"]: f"{release}-process" if "valueFrom" in e else e.get("value", "")
               for e in pod_spec["containers"][0]["env"]}
        assert env["FINETUNE_NAMESPACES"] == jobs_ns and env["FINETUNE_LEADER_ELECTION"] == "true"
        kubeconfig = cp.mint_kubeconfig(system_ns, pod_spec["serviceAccountName"], tmp_path / "operator.kubeconfig")
        operator = OperatorProcess(env, kubeconfig, tmp_path / "operator.log")

        cp.apply(volumes)
        cp.kubectl("create", "secret", "generic", "hf-token", "-n", jobs_ns, "--from-literal=HF_TOKEN=not-a-token")
        job = _example_job(jobs_ns)
        name = job["metadata"]["name"]
        cp.apply(job)

        def phase() -> str | None:
            return cp.kubectl_json("get", "ftj", name, "-n", jobs_ns).get("status", {}).get("phase")
        try:
            cp.wait_for(lambda: phase() == "Succeeded", timeout=90, what=f"{name} Succeeded")
        except AssertionError:
            raise AssertionError(f"{name} is {phase()}; operator log:\n{operator.log.read_text()[-4000:]}") from None
        [trainer_job] = cp.kubectl_json("get", "jobs", "-n", jobs_ns, "-l", f"finetune.io/job={name}")["items"]
        [container] = trainer_job["spec"]["template"]["spec"]["containers"]
        assert container["image"] == ":".join(TRAINER_IMAGE)  # trainer.image reached the trainer pods
        assert container["command"][:2] == ["torchrun", "--standalone"]  # 2 GPUs on one node
        table = cp.kubectl("get", "ftj", "-n", jobs_ns).stdout
        assert name in table and "Succeeded" in table
        log = operator.log.read_text()
        # A refused request carries the API server's reason, Forbidden; a bare "403" would also match the
        # milliseconds of a log timestamp (",403").
        assert not re.search(r"Forbidden|\(403\)", log), log[-3000:]
        # It led through the chart's Lease: the Role for it is enough (KWOK's pods run no operator to compete).
        lease = cp.kubectl_json("get", "lease", f"{release}-finetune-operator", "-n", system_ns)
        assert lease["spec"]["holderIdentity"] == f"{release}-process"
    finally:
        if operator:
            operator.stop()
        if installed:
            helm("uninstall", release, "--namespace", system_ns, "--wait", "--timeout", "60s", env=cp.env)
            # Uninstalling kept the CRD (helm.sh/resource-policy: keep), so FineTuneJobs elsewhere survive.
            kept = cp.kubectl("get", "crd", CRD_NAME, check=False).returncode == 0
        _release_crd(cp)
        cp.kubectl("delete", "pv", *(v["metadata"]["name"] for v in volumes if v["kind"] == "PersistentVolume"),
                   "--ignore-not-found", "--wait=false", check=False)
    assert kept, "helm uninstall deleted the CRD"
    assert not cp.kubectl_json("get", "deployments", "-n", system_ns)["items"]
