"""The local control plane (tools/k8s) behaves like a real cluster for what the operator relies on:
CRDs with CEL validation and printer columns, Jobs scheduled onto KWOK nodes that complete or fail,
garbage collection through owner references, RBAC with ServiceAccount tokens, and Pod Security admission."""

from __future__ import annotations

import copy
import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

if TYPE_CHECKING:
    from conftest import ControlPlane

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.cluster

FTJ_CRD = REPO / "crds" / "finetune.io_finetunejobs.yaml"


def _uid() -> str:
    return uuid.uuid4().hex[:6]


def _job(name: str, labels: dict | None = None, annotations: dict | None = None, gpus: int = 0) -> dict:
    resources: dict = {"requests": {"cpu": "1", "memory": "1Gi"}}
    if gpus:
        resources["requests"]["nvidia.com/gpu"] = str(gpus)
        resources["limits"] = {"nvidia.com/gpu": str(gpus)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels or {}, "annotations": annotations or {}},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "containers": [{"name": "main", "image": "example.invalid/trainer:test", "resources": resources}],
                },
            },
        },
    }


def _job_condition(cp: ControlPlane, ns: str, name: str, ctype: str) -> dict | None:
    job = cp.kubectl_json("get", "job", name, "-n", ns)
    for cond in job.get("status", {}).get("conditions", []):
        if cond["type"] == ctype and cond["status"] == "True":
            return cond
    return None


def _pods(cp: ControlPlane, ns: str, selector: str) -> list[dict]:
    return cp.kubectl_json("get", "pods", "-n", ns, "-l", selector)["items"]


# --------------------------------------------------------------------------------- plane basics


def test_plane_is_ready(control_plane: ControlPlane) -> None:
    assert control_plane.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    version = control_plane.kubectl_json("version")
    assert version["serverVersion"]["gitVersion"].startswith("v1.36.")
    nodes = control_plane.kubectl_json("get", "nodes", "-l", "type=kwok")["items"]
    assert len(nodes) >= 1
    for node in nodes:
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True", node["metadata"]["name"]
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        assert node["status"]["allocatable"]["cpu"] == "32"


# --------------------------------------------------------------------------------- CRDs + CEL

WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.cp-test.finetune.io
spec:
  group: cp-test.finetune.io
  scope: Namespaced
  names: {kind: Widget, plural: widgets, singular: widget, shortNames: [wdg]}
  versions:
  - name: v1
    served: true
    storage: true
    additionalPrinterColumns:
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
    - {name: Max, type: integer, jsonPath: .spec.maxReplicas}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [replicas, maxReplicas]
            properties:
              replicas: {type: integer, minimum: 0}
              maxReplicas: {type: integer, minimum: 0}
              size: {type: string}
            x-kubernetes-validations:
            - rule: self.replicas <= self.maxReplicas
              message: replicas must not exceed maxReplicas
            - rule: "!has(oldSelf.size) || self.size == oldSelf.size"
              message: spec.size is immutable
              optionalOldSelf: false
"""


def _wait_established(cp: ControlPlane, crd_name: str) -> None:
    cp.kubectl("wait", "--for=condition=Established", f"crd/{crd_name}", "--timeout=60s")


def test_inline_crd_with_cel_rule_is_served_and_enforced(control_plane: ControlPlane, namespace: str) -> None:
    cp = control_plane
    cp.apply(WIDGET_CRD)
    _wait_established(cp, "widgets.cp-test.finetune.io")

    def widget(name: str, replicas: int, max_replicas: int, size: str = "s") -> str:
        return yaml.safe_dump(
            {
                "apiVersion": "cp-test.finetune.io/v1",
                "kind": "Widget",
                "metadata": {"name": name},
                "spec": {"replicas": replicas, "maxReplicas": max_replicas, "size": size},
            }
        )

    # Discovery may lag the Established condition by a moment.
    cp.wait_for(lambda: cp.kubectl("apply", "-n", namespace, "-f", "-", input=widget("ok", 1, 3), check=False).returncode == 0,
             timeout=30, what="Widget to be accepted")
    out = cp.kubectl("get", "wdg", "-n", namespace).stdout
    header = out.splitlines()[0].split()
    assert header[:3] == ["NAME", "REPLICAS", "MAX"], out
    assert out.splitlines()[1].split()[:3] == ["ok", "1", "3"], out

    bad = cp.kubectl("apply", "-n", namespace, "-f", "-", input=widget("bad", 5, 3), check=False)
    assert bad.returncode != 0
    assert "replicas must not exceed maxReplicas" in bad.stderr, bad.stderr

    # A transition rule (oldSelf) is enforced on update.
    changed = cp.kubectl("apply", "-n", namespace, "-f", "-", input=widget("ok", 1, 3, size="xl"), check=False)
    assert changed.returncode != 0
    assert "spec.size is immutable" in changed.stderr, changed.stderr


def _cel_messages(schema: dict) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for rule in node.get("x-kubernetes-validations", []) or []:
                found.append((rule.get("rule", ""), rule.get("message", "")))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return found


@pytest.mark.skipif(not FTJ_CRD.exists(), reason=f"{FTJ_CRD.relative_to(REPO)} does not exist yet")
def test_finetunejob_crd_is_served_with_columns_and_cel(control_plane: ControlPlane, namespace: str) -> None:
    cp = control_plane
    crd = yaml.safe_load(FTJ_CRD.read_text())
    # Server-side apply: no last-applied annotation, so CRD size is never a problem.
    cp.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=fto-tests", "-f", str(FTJ_CRD))
    _wait_established(cp, crd["metadata"]["name"])

    version = next(v for v in crd["spec"]["versions"] if v.get("served"))
    api_version = f"{crd['spec']['group']}/{version['name']}"
    ftj = {
        "apiVersion": api_version,
        "kind": "FineTuneJob",
        "metadata": {"name": f"cp-{_uid()}"},
        "spec": {
            "model": {"source": "hf://org/tiny-model"},
            "task": "sequence-classification",
            "dataset": {"source": "hf://glue?config=mrpc"},
            "strategy": {"type": "full"},
        },
    }
    def try_create() -> bool:
        proc = cp.kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(ftj), check=False)
        if proc.returncode != 0 and "no matches for kind" not in proc.stderr and "the server could not find" not in proc.stderr:
            raise AssertionError(f"a minimal valid FineTuneJob was rejected: {proc.stderr}")
        return proc.returncode == 0

    cp.wait_for(try_create, timeout=30, what="a minimal FineTuneJob to be created")

    # `kubectl get ftj` prints the CRD's printer columns (priority 0 ones).
    out = cp.kubectl("get", "ftj", "-n", namespace).stdout
    header = out.splitlines()[0].split()
    expected = ["NAME"] + [c["name"].upper() for c in version.get("additionalPrinterColumns", []) if not c.get("priority")]
    assert header == expected, out
    assert out.splitlines()[1].split()[0] == ftj["metadata"]["name"]

    # CEL: an invalid object is rejected with the rule's message.
    rules = _cel_messages(version["schema"]["openAPIV3Schema"])
    checked = 0
    nodes_rule = next((m for r, m in rules if "self.nodes" in r and "self.gpus" in r), None)
    if nodes_rule:
        bad = copy.deepcopy(ftj)
        bad["metadata"]["name"] = f"cp-bad-{_uid()}"
        bad["spec"]["resources"] = {"nodes": 2, "gpus": 0}
        proc = cp.kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(bad), check=False)
        assert proc.returncode != 0, "nodes=2 with gpus=0 was accepted"
        assert nodes_rule in proc.stderr, proc.stderr
        checked += 1
    model_rule = next((m for r, m in rules if r.replace(" ", "") == "self==oldSelf" and "model" in m), None)
    if model_rule:
        patch = json.dumps({"spec": {"model": {"source": "hf://org/another-model"}}})
        proc = cp.kubectl("patch", "ftj", ftj["metadata"]["name"], "-n", namespace, "--type=merge", "-p", patch, check=False)
        assert proc.returncode != 0, "spec.model was changed although the CRD says it is immutable"
        assert model_rule in proc.stderr, proc.stderr
        checked += 1
    if not checked:
        pytest.skip("the FineTuneJob CRD has no CEL rule this test knows how to violate")


def test_the_apiserver_checks_output_push_references(control_plane: ControlPlane, namespace: str) -> None:
    """The reference pattern of output.push is one the apiserver's regexp engine compiles and enforces."""
    cp = control_plane
    cp.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=fto-tests", "-f", str(FTJ_CRD))
    _wait_established(cp, yaml.safe_load(FTJ_CRD.read_text())["metadata"]["name"])

    def create(reference: str) -> subprocess.CompletedProcess:
        ftj = {"apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": f"push-{_uid()}"},
               "spec": {"model": {"source": "hf://org/tiny-model"}, "task": "sequence-classification",
                        "dataset": {"source": "hf://glue?config=mrpc"}, "strategy": {"type": "full"},
                        "output": {"push": {"reference": reference, "secretRef": {"name": "registry-push"}}}}}
        return cp.kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(ftj), check=False)

    assert cp.wait_for(lambda: create("10.245.0.1:5000/fto/e2e:v1").returncode == 0 or None, timeout=30,
                       what="a FineTuneJob with output.push to be created")
    refused = create("fto/e2e:v1")
    assert refused.returncode != 0 and "spec.output.push.reference" in refused.stderr, refused.stderr


def test_the_apiserver_checks_batch_tokens_against_task_and_max_length(control_plane: ControlPlane,
                                                                       namespace: str) -> None:
    """The spec-level CEL rules of training.batchTokens compile and refuse what pydantic refuses."""
    cp = control_plane
    cp.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=fto-tests", "-f", str(FTJ_CRD))
    _wait_established(cp, yaml.safe_load(FTJ_CRD.read_text())["metadata"]["name"])

    def create(task: str, batch_tokens: int, max_length: int | None = None) -> subprocess.CompletedProcess:
        dataset = {"source": "hf://org/data", **({"maxLength": max_length} if max_length else {})}
        ftj = {"apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": f"tokens-{_uid()}"},
               "spec": {"model": {"source": "hf://org/tiny-model"}, "task": task, "dataset": dataset,
                        "strategy": {"type": "full"}, "training": {"batchTokens": batch_tokens}}}
        return cp.kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(ftj), check=False)

    assert cp.wait_for(lambda: create("causal-lm", 4096, 2048).returncode == 0 or None, timeout=30,
                       what="a causal-lm FineTuneJob with batchTokens to be created")
    other_task = create("sequence-classification", 4096)
    assert other_task.returncode != 0 and "training.batchTokens applies only to task causal-lm" in other_task.stderr
    too_small = create("causal-lm", 100)  # under the default maxLength 128
    assert too_small.returncode != 0 and "training.batchTokens must be at least dataset.maxLength" in too_small.stderr
    assert create("causal-lm", 1024, 2048).returncode != 0


def test_the_apiserver_refuses_qlora_without_gpus(control_plane: ControlPlane, namespace: str) -> None:
    """strategy.lora.quantization needs resources.gpus: a rule across the spec, enforced by the apiserver (CEL)."""
    cp = control_plane
    cp.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=fto-tests", "-f", str(FTJ_CRD))
    _wait_established(cp, yaml.safe_load(FTJ_CRD.read_text())["metadata"]["name"])

    def create(**spec) -> subprocess.CompletedProcess:
        ftj = {"apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": f"qlora-{_uid()}"},
               "spec": {"model": {"source": "hf://org/tiny-model"}, "task": "causal-lm",
                        "dataset": {"source": "hf://org/instructions"},
                        "strategy": {"type": "lora", "lora": {"quantization": "nf4"}}, **spec}}
        return cp.kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(ftj), check=False)

    assert cp.wait_for(lambda: create(resources={"gpus": 1}).returncode == 0 or None, timeout=30,
                       what="a QLoRA FineTuneJob with a GPU to be created")
    for spec in ({}, {"resources": {"cpu": "4"}}, {"resources": {"gpus": 0}}):
        refused = create(**spec)
        assert refused.returncode != 0 and "spec.strategy.lora.quantization (4-bit base weights, QLoRA) needs GPUs" \
            in refused.stderr, (spec, refused.stderr)


# --------------------------------------------------------------------------------- Jobs on KWOK


def test_job_is_scheduled_on_kwok_node_and_completes(control_plane: ControlPlane, namespace: str) -> None:
    cp = control_plane
    cp.apply(_job("ok", gpus=1), namespace=namespace)
    cp.kubectl("wait", "-n", namespace, "--for=condition=Complete", "job/ok", "--timeout=90s")
    pods = _pods(cp, namespace, "job-name=ok")
    assert len(pods) == 1
    pod = pods[0]
    assert pod["spec"]["nodeName"].startswith("kwok-node-")
    assert pod["status"]["phase"] == "Succeeded"
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0 and term["reason"] == "Completed"
    job = cp.kubectl_json("get", "job", "ok", "-n", namespace)
    assert job["status"]["succeeded"] == 1


def test_fake_fail_label_fails_the_job_with_exit_code_and_message(control_plane: ControlPlane, namespace: str) -> None:
    cp = control_plane
    cp.apply(
        _job(
            "boom",
            labels={"finetune.io/fake-fail": "true"},
            annotations={
                "finetune.io/fake-exit-code": "42",
                "finetune.io/fake-termination-message": '{"reason": "OutOfMemory"}',
            },
        ),
        namespace=namespace,
    )
    cond = cp.wait_for(lambda: _job_condition(cp, namespace, "boom", "Failed"), timeout=90, what="Job boom to fail")
    assert cond["reason"] == "BackoffLimitExceeded", cond
    assert _job_condition(cp, namespace, "boom", "Complete") is None
    pod = _pods(cp, namespace, "job-name=boom")[0]
    assert pod["status"]["phase"] == "Failed"
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 42
    assert term["reason"] == "Error"
    assert json.loads(term["message"]) == {"reason": "OutOfMemory"}


def test_fake_run_forever_keeps_the_pod_running(control_plane: ControlPlane, namespace: str) -> None:
    cp = control_plane
    cp.apply(_job("forever", labels={"finetune.io/fake-run": "forever"}), namespace=namespace)
    cp.wait_for(
        lambda: [p for p in _pods(cp, namespace, "job-name=forever") if p["status"].get("phase") == "Running"],
        timeout=60,
        what="the pod to run",
    )
    cp.kubectl("wait", "-n", namespace, "--for=condition=Ready", "pod", "-l", "job-name=forever", "--timeout=30s")
    # Well past the default completion delay (1-1.5 s) it is still running.
    time.sleep(4)
    job = cp.kubectl_json("get", "job", "forever", "-n", namespace)
    assert job["status"].get("active") == 1, job["status"]
    assert [p["status"]["phase"] for p in _pods(cp, namespace, "job-name=forever")] == ["Running"]


# --------------------------------------------------------------------------------- garbage collection


def test_deleting_an_owner_garbage_collects_its_children(control_plane: ControlPlane, namespace: str) -> None:
    cp = control_plane
    cp.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "parent"}, "data": {"a": "1"}}, namespace=namespace)
    parent_uid = cp.kubectl_json("get", "configmap", "parent", "-n", namespace)["metadata"]["uid"]
    cp.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "child",
                "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "parent", "uid": parent_uid}],
            },
        },
        namespace=namespace,
    )
    # A Job whose pod keeps running: deleting the Job (background propagation) must remove the pod.
    cp.apply(_job("owner", labels={"finetune.io/fake-run": "forever"}), namespace=namespace)
    cp.wait_for(lambda: _pods(cp, namespace, "job-name=owner"), timeout=60, what="the Job's pod")

    cp.kubectl("delete", "configmap", "parent", "-n", namespace, "--cascade=background")
    cp.kubectl("delete", "job", "owner", "-n", namespace, "--cascade=background")

    cp.wait_for(
        lambda: cp.kubectl("get", "configmap", "child", "-n", namespace, check=False).returncode != 0,
        timeout=60,
        what="the child ConfigMap to be garbage collected",
    )
    cp.wait_for(lambda: not _pods(cp, namespace, "job-name=owner"), timeout=60, what="the Job's pods to be garbage collected")


# --------------------------------------------------------------------------------- RBAC


def test_service_account_without_permission_gets_403(control_plane: ControlPlane, namespace: str, tmp_path: Path) -> None:
    cp = control_plane
    cp.apply(
        [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "limited"}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "read-configmaps"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "limited-read-configmaps"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps"},
                "subjects": [{"kind": "ServiceAccount", "name": "limited", "namespace": namespace}],
            },
        ],
        namespace=namespace,
    )
    kubeconfig = cp.mint_kubeconfig(namespace, "limited", tmp_path / "limited.kubeconfig")

    who = cp.kubectl_json("auth", "whoami", kubeconfig=kubeconfig)
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:limited"

    # Granted: listing ConfigMaps in its namespace.
    cp.kubectl("get", "configmaps", "-n", namespace, kubeconfig=kubeconfig)
    # Not granted: Secrets here, ConfigMaps elsewhere, creating anything.
    for args in (
        ("get", "secrets", "-n", namespace),
        ("get", "configmaps", "-n", "kube-system"),
        ("create", "configmap", "nope", "-n", namespace),
    ):
        proc = cp.kubectl(*args, kubeconfig=kubeconfig, check=False)
        assert proc.returncode != 0, args
        assert "forbidden" in proc.stderr.lower(), proc.stderr
        assert f"User \"system:serviceaccount:{namespace}:limited\" cannot" in proc.stderr, proc.stderr
    raw = cp.kubectl("get", "--raw", f"/api/v1/namespaces/{namespace}/secrets", kubeconfig=kubeconfig, check=False)
    assert "403" in raw.stderr or "Forbidden" in raw.stderr, raw.stderr


# --------------------------------------------------------------------------------- Pod Security


def test_pod_security_restricted_namespace_refuses_privileged_pod(control_plane: ControlPlane) -> None:
    cp = control_plane
    ns = cp.create_namespace(labels={"pod-security.kubernetes.io/enforce": "restricted"})
    try:
        privileged = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "privileged"},
            "spec": {
                "containers": [
                    {"name": "main", "image": "example.invalid/x:1", "securityContext": {"privileged": True}}
                ]
            },
        }
        proc = cp.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(privileged), check=False)
        assert proc.returncode != 0
        assert 'violates PodSecurity "restricted' in proc.stderr, proc.stderr
        assert "privileged" in proc.stderr

        # The pod shape the operator renders for trainers (§5 Pod security) is admitted.
        compliant = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "compliant"},
            "spec": {
                "automountServiceAccountToken": False,
                "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [
                    {
                        "name": "main",
                        "image": "example.invalid/x:1",
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }
                ],
            },
        }
        cp.apply(compliant, namespace=ns)
        cp.kubectl("wait", "-n", ns, "--for=condition=Ready", "pod/compliant", "--timeout=60s")
    finally:
        cp.delete_namespace(ns)


# --------------------------------------------------------------------------------- what the operator also leans on


def test_indexed_job_ttl_and_suspend(control_plane: ControlPlane, namespace: str) -> None:
    """Indexed Jobs (multi-node gangs) complete, ``suspend`` holds pods back, ttlSecondsAfterFinished deletes."""
    cp = control_plane
    job = _job("gang")
    job["spec"].update(
        {"completionMode": "Indexed", "completions": 2, "parallelism": 2, "suspend": True, "ttlSecondsAfterFinished": 1}
    )
    cp.apply(job, namespace=namespace)
    cp.wait_for(lambda: _job_condition(cp, namespace, "gang", "Suspended"), timeout=30, what="Job gang to be suspended")
    assert _pods(cp, namespace, "job-name=gang") == []

    cp.kubectl("patch", "job", "gang", "-n", namespace, "--type=merge", "-p", '{"spec": {"suspend": false}}')
    pods = cp.wait_for(lambda: len(_pods(cp, namespace, "job-name=gang")) == 2 and _pods(cp, namespace, "job-name=gang"),
                       timeout=60, what="two indexed pods")
    indexes = sorted(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods)
    assert indexes == ["0", "1"]
    # ttl-after-finished controller removes the finished Job.
    cp.wait_for(lambda: cp.kubectl("get", "job", "gang", "-n", namespace, check=False).returncode != 0,
                timeout=90, what="the finished Job to be deleted by its TTL")


def test_helm_installs_a_chart_and_deployment_becomes_available(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    cp = control_plane
    chart = tmp_path / "mini"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: mini\nversion: 0.1.0\nkubeVersion: '>=1.30.0-0'\n")
    (chart / "values.yaml").write_text("replicas: 2\n")
    (chart / "templates" / "deploy.yaml").write_text(
        """apiVersion: apps/v1
kind: Deployment
metadata: {name: {{ .Release.Name }}-web}
spec:
  replicas: {{ .Values.replicas }}
  selector: {matchLabels: {app: {{ .Release.Name }}}}
  template:
    metadata: {labels: {app: {{ .Release.Name }}}}
    spec:
      containers: [{name: web, image: example.invalid/web:1}]
"""
    )
    helm = [str(cp.bin_dir / "helm"), "--kubeconfig", str(cp.kubeconfig)]
    proc = subprocess.run(
        [*helm, "install", "mini", str(chart), "-n", namespace, "--wait", "--timeout", "90s"],
        capture_output=True, text=True, timeout=120, env=cp.env,
    )
    assert proc.returncode == 0, proc.stderr
    dep = cp.kubectl_json("get", "deployment", "mini-web", "-n", namespace)
    assert dep["status"].get("availableReplicas") == 2
    listed = subprocess.run([*helm, "list", "-n", namespace, "-o", "json"], capture_output=True, text=True, env=cp.env)
    assert [r["status"] for r in json.loads(listed.stdout)] == ["deployed"]
