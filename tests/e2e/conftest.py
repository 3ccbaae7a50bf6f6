"""Fixtures of the end-to-end tests: the images built from the Dockerfile, the real node of the local plane, the
operator installed in-cluster by the Helm chart, and a local PersistentVolume holding a tiny model and data.

Everything is session-scoped and built once: the images by tools/images/build.sh (cached per machine), loaded
into the node's containerd by ``cluster.sh load-image``; the chart installed into a namespace that enforces Pod
Security ``restricted``, watching one jobs namespace that enforces it too. In CI (``FTO_REQUIRE_CLUSTER=1``) a
missing node or image fails the tests instead of skipping them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:  # pyproject's pythonpath does this under pytest; kept for direct imports
    sys.path.insert(0, str(TESTS))

# The session-scoped plane fixture of tests/cluster, shared (a plane that is up is reused, never restarted).
from cluster.conftest import CLUSTER_SH, ControlPlane, _truthy, control_plane, wait_for  # noqa: E402,F401
from helm_chart import CHART, require_tool  # noqa: E402
from prometheus_live import Prometheus, bin_dir, pod_monitor_jobs, service_monitor_jobs  # noqa: E402

REPO = TESTS.parent
IMAGES_SH = REPO / "tools" / "images" / "build.sh"
NODE_LABEL, NODE_VALUE = "finetune.io/node", "real"
# What a trainer pod needs to land on the real node (the KWOK nodes would only pretend to run it).
ON_REAL_NODE = {
    "nodeSelector": {NODE_LABEL: NODE_VALUE},
    "tolerations": [{"key": NODE_LABEL, "operator": "Equal", "value": NODE_VALUE, "effect": "NoSchedule"}],
}
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}
CLAIM = "e2e-data"


def _missing(message: str) -> None:
    if _truthy("FTO_REQUIRE_CLUSTER"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def real_node(control_plane: ControlPlane) -> str:
    """The name of the plane's real node (kubelet + containerd), Ready."""
    def ready() -> str | None:
        nodes = control_plane.kubectl_json("get", "nodes", "-l", f"{NODE_LABEL}={NODE_VALUE}")["items"]
        for node in nodes:
            conditions = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
            if conditions.get("Ready") == "True":
                return node["metadata"]["name"]
        return None

    try:
        return wait_for(ready, timeout=90, interval=1, what="the real node to be Ready")
    except AssertionError as error:
        _missing(f"no Ready real node in the local plane ({error}); `tools/k8s/cluster.sh up` starts one")
        raise


@dataclass(frozen=True)
class Images:
    operator: str
    trainer: str


def _image_refs() -> dict[str, str]:
    out = subprocess.run([str(IMAGES_SH), "--print-refs"], capture_output=True, text=True, timeout=120, check=True)
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


@pytest.fixture(scope="session")
def images(control_plane: ControlPlane, real_node: str) -> Images:
    """Both Dockerfile targets, built here (cached) and imported into the real node's containerd."""
    started = time.monotonic()
    build = subprocess.run([str(IMAGES_SH), "all"], capture_output=True, text=True, timeout=3 * 3600)
    if build.returncode != 0:
        _missing(f"tools/images/build.sh all failed:\n{build.stderr[-4000:]}")
    refs = _image_refs()
    archives = [refs["OPERATOR_ARCHIVE"], refs["TRAINER_ARCHIVE"]]
    env = dict(os.environ, FTO_K8S_STATE=str(control_plane.state_dir), FTO_K8S_BIN=str(control_plane.bin_dir))
    load = subprocess.run([str(CLUSTER_SH), "load-image", *archives], capture_output=True, text=True, timeout=1800,
                          env=env)
    if load.returncode != 0:
        pytest.fail(f"cluster.sh load-image failed:\n{load.stderr[-4000:]}", pytrace=False)
    print(f"\nimages built and loaded in {time.monotonic() - started:.0f}s: {refs}")
    return Images(operator=refs["OPERATOR_IMAGE"], trainer=refs["TRAINER_IMAGE"])


def _split(ref: str) -> tuple[str, str]:
    repository, _, tag = ref.rpartition(":")
    return repository, tag


@dataclass
class Cluster:
    """The operator installed by the chart, and the namespace whose FineTuneJobs it runs."""

    cp: ControlPlane
    system_ns: str
    ns: str
    volume: Path  # the host folder behind pvc://e2e-data
    # One per session: its ClusterRoles are cluster-scoped, so a fixed name collides with a session running beside
    # this one, or with one that was killed before it could uninstall.
    release: str

    def apply_job(self, name: str, **spec: Any) -> None:
        self.cp.apply({"apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob",
                       "metadata": {"name": name, "namespace": self.ns}, "spec": spec})

    def ftj(self, name: str) -> dict[str, Any]:
        return self.cp.kubectl_json("get", "finetunejob", name, "-n", self.ns)

    def status(self, name: str) -> dict[str, Any]:
        return self.ftj(name).get("status") or {}

    def ready_condition(self, name: str) -> dict[str, Any]:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == "Ready"), {})

    def pods(self, name: str, attempt: int | None = None) -> list[dict[str, Any]]:
        selector = f"finetune.io/job={name}" + (f",finetune.io/attempt={attempt}" if attempt else "")
        return self.cp.kubectl_json("get", "pods", "-n", self.ns, "-l", selector)["items"]

    def events(self, name: str) -> list[dict[str, Any]]:
        return self.cp.kubectl_json("get", "events", "-n", self.ns,
                                    "--field-selector", f"involvedObject.name={name},involvedObject.kind=FineTuneJob")["items"]

    def logs(self, pod: str) -> str:
        return self.cp.kubectl("logs", "-n", self.ns, pod, check=False).stdout

    def wait_phase(self, name: str, phases: tuple[str, ...], timeout: float) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            status = self.status(name)
            return status if status.get("phase") in phases else None
        try:
            return wait_for(reached, timeout=timeout, interval=1, what=f"{name} to reach {phases}")
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.diagnose(name)}") from None

    def diagnose(self, name: str) -> str:
        """What a person would look at when a job does not get where it should."""
        parts = [f"status: {json.dumps(self.status(name), indent=1)[:3000]}"]
        for pod in self.pods(name):
            pod_name = pod["metadata"]["name"]
            parts.append(f"pod {pod_name}: {json.dumps(pod.get('status', {}))[:1500]}")
            parts.append(f"log of {pod_name}:\n{self.logs(pod_name)[-3000:]}")
        operator = self.cp.kubectl("logs", "-n", self.system_ns, "deployment/" + self.release + "-finetune-operator",
                                   "--tail=40", check=False)
        parts.append(f"operator log:\n{operator.stdout[-4000:]}{operator.stderr[-500:]}")
        return "\n".join(parts)


def _write_volume(root: Path) -> None:
    """A tiny BERT, a bigger one (slow enough to stop mid-epoch) and review data, owned by the pods' user."""
    import tiny_models

    tiny_models.save_tiny_model("bert", "AutoModelForSequenceClassification", root / "models" / "bert", num_labels=2)
    tiny_models.save_tiny_model("bert", "AutoModelForSequenceClassification", root / "models" / "bert-wide",
                                num_labels=2, hidden_size=256, intermediate_size=1024, num_attention_heads=4)
    tiny_models.write_sentiment_csv(root / "data" / "reviews" / "train.csv", n=64)
    tiny_models.write_sentiment_csv(root / "data" / "reviews" / "validation.csv", n=16, seed=1)
    tiny_models.write_sentiment_csv(root / "data" / "reviews" / "test.csv", n=16, seed=4)  # spec.evaluation.split
    tiny_models.write_sentiment_csv(root / "data" / "big" / "train.csv", n=1600, seed=2)
    tiny_models.write_sentiment_csv(root / "data" / "big" / "validation.csv", n=16, seed=3)
    (root / "out").mkdir(exist_ok=True)
    for path in [root, *root.rglob("*")]:
        os.chown(path, 1000, 1000)


def _storage(cp: ControlPlane, node: str, ns: str, volume: Path) -> list[dict[str, Any]]:
    """A local PersistentVolume on the real node and the claim the jobs name as pvc://e2e-data."""
    pv = f"{ns}-{CLAIM}"
    return [
        {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "fto-e2e-local"},
         "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "WaitForFirstConsumer"},
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
         "spec": {"capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteOnce"],
                  "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "fto-e2e-local",
                  "claimRef": {"namespace": ns, "name": CLAIM},
                  "local": {"path": str(volume)},
                  "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                      {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": CLAIM, "namespace": ns},
         "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fto-e2e-local",
                  "resources": {"requests": {"storage": "5Gi"}}}},
    ]


@pytest.fixture(scope="session")
def cluster(control_plane: ControlPlane, real_node: str, images: Images,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cp = control_plane
    suffix = uuid.uuid4().hex[:6]
    system_ns = cp.create_namespace(f"fto-e2e-system-{suffix}", labels=RESTRICTED)
    ns = cp.create_namespace(f"fto-e2e-{suffix}", labels=RESTRICTED)
    # The kubelet mounts the volume from the host: a folder of the plane's state, not pytest's tmp (which a
    # long session may clean while the node still uses it).
    volume = cp.state_dir / "e2e-volumes" / ns
    volume.mkdir(parents=True, exist_ok=True)
    _write_volume(volume)
    cp.apply(_storage(cp, real_node, ns, volume))
    operator_repo, operator_tag = _split(images.operator)
    trainer_repo, trainer_tag = _split(images.trainer)
    values = {
        "image": {"repository": operator_repo, "tag": operator_tag, "pullPolicy": "Never"},
        "trainer": {"image": {"repository": trainer_repo, "tag": trainer_tag, "pullPolicy": "Never"},
                    "terminationGracePeriodSeconds": 60},
        "rbac": {"clusterWide": False},
        "namespaces": [ns],
        "operator": {"pollIntervalSeconds": 1, "workers": 4},
        # A price table, so status.usage.estimatedCost and the dashboard's cost panel have something to show.
        "pricing": {"currency": "USD", "default": {"gpuHour": 2.5, "cpuCoreHour": 0.04, "memoryGibHour": 0.005}},
        **ON_REAL_NODE,
        # The CRD may exist already (the KWOK tests apply it); the chart installs it when it does not.
        "crds": {"install": False},
    }
    values_file = tmp_path_factory.mktemp("e2e") / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    helm = [str(cp.bin_dir / "helm"), "--kubeconfig", str(cp.kubeconfig)]
    release = f"fto-e2e-{suffix}"
    install = subprocess.run([*helm, "install", release, str(CHART), "--namespace", system_ns,
                              "--values", str(values_file), "--wait", "--timeout", "5m"],
                             capture_output=True, text=True, timeout=400)
    env = Cluster(cp=cp, system_ns=system_ns, ns=ns, volume=volume, release=release)
    try:
        if install.returncode != 0:
            pods = cp.kubectl("get", "pods", "-n", system_ns, "-o", "wide", check=False).stdout
            described = cp.kubectl("describe", "pods", "-n", system_ns, check=False).stdout
            logs = cp.kubectl("logs", "-n", system_ns, f"deployment/{release}-finetune-operator", "--tail=30",
                              check=False).stdout
            pytest.fail(f"helm install failed:\n{install.stderr[-3000:]}\n{pods}\n{described[-4000:]}\n{logs}",
                        pytrace=False)
        yield env
    finally:  # a failed install too: its cluster-scoped objects would block the next session's release
        subprocess.run([*helm, "uninstall", release, "--namespace", system_ns, "--wait", "--timeout", "2m"],
                       capture_output=True, text=True, timeout=180)
        cp.kubectl("delete", "finetunejobs", "--all", "-n", ns, "--wait=true", "--timeout=120s", check=False)
        cp.kubectl("delete", "namespace", ns, system_ns, "--wait=true", "--timeout=120s", check=False)
        cp.kubectl("delete", "pv", f"{ns}-{CLAIM}", "--ignore-not-found", check=False)
        shutil.rmtree(volume, ignore_errors=True)


def chart_prometheus(cluster: Cluster, workdir: Path, rule_for: str = "5m") -> Prometheus:
    """Prometheus scraping the release as its chart's ServiceMonitor and PodMonitor say (1 s intervals), with the
    chart's PrometheusRule (alerts holding ``rule_for`` before they fire), for the release's values as installed."""
    binary = require_tool(bin_dir() / "prometheus", "tools/prometheus/build.sh")
    cp = cluster.cp
    helm = [str(cp.bin_dir / "helm"), "--kubeconfig", str(cp.kubeconfig)]
    values = yaml.safe_load(subprocess.run([*helm, "get", "values", cluster.release, "-n", cluster.system_ns, "-o", "yaml"],
                                           capture_output=True, text=True, check=True).stdout)
    values["monitoring"] = {"serviceMonitor": {"enabled": True, "interval": "1s", "scrapeTimeout": "1s"},
                            "podMonitor": {"enabled": True, "interval": "1s", "scrapeTimeout": "1s"},
                            "prometheusRule": {"enabled": True, "for": rule_for}}
    (workdir / "values.yaml").write_text(yaml.safe_dump(values))
    rendered = subprocess.run([*helm, "template", cluster.release, str(CHART), "-n", cluster.system_ns,
                               "--values", str(workdir / "values.yaml")], capture_output=True, text=True, check=True)
    objects = {o["kind"]: o for o in yaml.safe_load_all(rendered.stdout) if o}
    jobs = [*service_monitor_jobs(objects["ServiceMonitor"], cp.kubeconfig),
            *pod_monitor_jobs(objects["PodMonitor"], cp.kubeconfig)]
    server = Prometheus(binary, workdir, jobs, rule_groups=objects["PrometheusRule"]["spec"])
    server.rules = objects["PrometheusRule"]["spec"]["groups"][0]["rules"]  # type: ignore[attr-defined]
    return server
