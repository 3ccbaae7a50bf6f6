"""Security: trainer pods pass Pod Security "restricted" admission for real, carry no service-account token, get
secrets only by reference (a planted secret value is searched for everywhere), the operator's RBAC is minimal, a
FineTuneJob cannot reach into another namespace, and neither metrics endpoint exposes secrets or configuration.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from cluster.operator_process import RUN_FOREVER, Env, operator_env
from trainer_process import TrainerRun, config

# What a namespaced object search covers (everything the operator, the Job controller and KWOK write).
SEARCHED_KINDS = ("configmaps,finetunejobs,jobs,pods,events,services,endpoints,endpointslices,serviceaccounts,"
                  "persistentvolumeclaims,limitranges,resourcequotas,leases,controllerrevisions,replicasets,"
                  "deployments")


@pytest.fixture(scope="module")
def env(control_plane, module_tmp: Path) -> Iterator[Env]:
    with operator_env(control_plane, module_tmp / "operator", prefix="rel-sec") as environment:
        yield environment


def _planted(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _variants(value: str) -> list[str]:
    """The value and its base64 (how a Secret stores it), so a copied Secret counts as a leak too."""
    return [value, base64.b64encode(value.encode()).decode().rstrip("=")]


def _leaks(text: str, values: list[str]) -> list[str]:
    return [v for value in values for v in _variants(value) if v in text]


# ------------------------------------------------------------------------------------------ pod security

@pytest.mark.cluster
def test_trainer_pods_pass_restricted_admission_and_carry_no_service_account_token(env: Env, figures) -> None:
    labels = env.cp.kubectl_json("get", "namespace", env.ns)["metadata"]["labels"]
    assert labels.get("pod-security.kubernetes.io/enforce") == "restricted"
    # The admission is real: a pod that is not restricted is refused in this namespace.
    bare = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "not-restricted", "namespace": env.ns},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    refused = env.cp.kubectl("apply", "-f", "-", input=json.dumps(bare), check=False)
    assert refused.returncode != 0 and 'violates PodSecurity "restricted' in refused.stderr, refused.stderr

    env.apply_job("secure", pod_metadata=RUN_FOREVER)
    [pod] = env.wait_running_pods("secure", 1)
    # Re-applying the label with a server-side dry run makes the apiserver check the running pods against it.
    relabel = env.cp.kubectl("label", "namespace", env.ns, "pod-security.kubernetes.io/enforce=restricted",
                             "--overwrite", "--dry-run=server")
    assert "violate" not in relabel.stderr, relabel.stderr
    spec = pod["spec"]
    [container] = spec["containers"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                            "readOnlyRootFilesystem": True, "runAsNonRoot": True}
    # No service-account token: not automounted, and no projected token volume slipped in by admission.
    assert spec["automountServiceAccountToken"] is False
    tokens = [v["name"] for v in spec["volumes"]
              if any("serviceAccountToken" in s for s in (v.get("projected") or {}).get("sources", []))]
    assert not tokens, tokens
    assert not [m for m in container.get("volumeMounts", []) if "serviceaccount" in m["mountPath"]]
    assert not any(v.get("secret") for v in spec["volumes"])
    env.complete_pod(pod)
    env.wait_phase("secure", "Succeeded")
    section = "security: pod security"
    figures.add(section, "namespace", "pod-security.kubernetes.io/enforce=restricted (a bare pod is refused: "
                                      + refused.stderr.strip().splitlines()[-1][:150] + ")")
    figures.add(section, "trainer pod", "admitted, ran, Succeeded; no violations on a server-side re-check")
    figures.add(section, "service-account token in trainer pods", "none (automountServiceAccountToken false, "
                                                                   "no projected token volume, no mount)")


# ------------------------------------------------------------------------------------------ secrets

@pytest.mark.cluster
def test_a_planted_secret_is_referenced_by_name_and_found_nowhere_else(env: Env, figures) -> None:
    model_token, data_token = _planted("model-token"), _planted("data-token")
    env.cp.apply([
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "planted-model", "namespace": env.ns},
         "stringData": {"HF_TOKEN": model_token}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "planted-data", "namespace": env.ns},
         "stringData": {"DATA_TOKEN": data_token}},
    ])
    env.apply_job("planted", pod_metadata=RUN_FOREVER,
                  model={"source": "hf://org/tiny-bert", "secretRef": {"name": "planted-model"}},
                  dataset={"source": "hf://glue?config=mrpc", "secretRef": {"name": "planted-data"}})
    [pod] = env.wait_running_pods("planted", 1)
    env.wait_phase("planted", "Running")
    metrics_while_running = env.operator.metrics()
    env.complete_pod(pod)
    env.wait_phase("planted", "Succeeded")

    [container] = pod["spec"]["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "planted-model"}}, {"secretRef": {"name": "planted-data"}}]
    assert not [e for e in container["env"] if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]]
    config = yaml.safe_load(pod["metadata"]["annotations"]["finetune.io/trainer-config"])  # the pod's config file
    assert config["model"]["secretRef"] == {"name": "planted-model"}  # by reference only
    assert config["dataset"]["secretRef"] == {"name": "planted-data"}

    values = [model_token, data_token]
    places = {
        f"objects in {env.ns} ({SEARCHED_KINDS.count(',') + 1} kinds, Secrets excluded)":
            env.cp.kubectl("get", SEARCHED_KINDS, "-n", env.ns, "-o", "json").stdout,
        f"objects in the operator's namespace {env.system_ns}":
            env.cp.kubectl("get", SEARCHED_KINDS, "-n", env.system_ns, "-o", "json").stdout,
        "FineTuneJob status": json.dumps(env.ftj("planted").get("status")),
        "Events": json.dumps(env.events("planted")),
        "operator log": env.operator.log.read_text(),
        "operator metrics (while running)": metrics_while_running,
        "operator metrics (after)": env.operator.metrics(),
    }
    leaks = {place: _leaks(text, values) for place, text in places.items()}
    assert not any(leaks.values()), leaks
    # The Secrets themselves do hold them: the search would have found a copy.
    assert _leaks(env.cp.kubectl("get", "secret", "planted-model", "-n", env.ns, "-o", "json").stdout, values)
    figures.add("security: secrets by reference", "planted", "2 Secrets (model.secretRef, dataset.secretRef) with "
                                                             "unique values; the job ran to Succeeded")
    figures.add("security: secrets by reference", "pod", "envFrom: secretRef by name only; no secretKeyRef, no value")
    figures.add("security: secrets by reference", "searched, value found in",
                {place: (found or "nowhere") for place, found in leaks.items()})


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.read().decode()


def test_the_trainer_never_writes_or_serves_its_secrets_or_its_configuration(tiny: Path, tmp_path: Path,
                                                                             figures) -> None:
    """The real trainer with the secrets in its environment, as envFrom puts them there: its metrics endpoint (read
    while it trains), its log, its summary, its termination message and every file it writes stay clean."""
    model_token, data_token = _planted("model-token"), _planted("data-token")
    cfg = config(tiny, tmp_path / "out", name="secretive", data="big", maxSteps=60, saveEvery=20)
    run = TrainerRun(tmp_path / "work", cfg, env={"HF_TOKEN": model_token, "DATA_TOKEN": data_token})
    run.start()
    url = run.wait_until(lambda: (m := re.search(r"metrics at (http://\S+/metrics)", run.log.read_text()))
                         and m.group(1), timeout=120, interval=0.05)
    metrics = run.wait_until(lambda: (text := _scrape(url)) and
                             re.search(r"^finetune_trainer_step\{[^}]*\} [1-9]", text, re.M) and text,
                             timeout=120, interval=0.05)
    assert run.wait() == 0, run.tail()

    values = [model_token, data_token]
    configuration = [cfg["model"]["source"], cfg["dataset"]["source"], cfg["output"]["location"], "secretRef"]
    files = {str(p.relative_to(tmp_path)): p.read_bytes().decode("utf-8", "replace")
             for p in tmp_path.rglob("*") if p.is_file() and p.name != "config.yaml"}
    places = {"trainer metrics (while training)": metrics, **files}
    leaks = {place: _leaks(text, values) for place, text in places.items()}
    assert not any(leaks.values()), {k: v for k, v in leaks.items() if v}
    exposed = [value for value in configuration if value in metrics]
    assert not exposed, exposed
    labels = set(re.findall(r"(\w+)=\"", metrics))
    assert labels <= {"finetunejob", "metric", "le"}, labels
    section = "security: trainer with secrets in its environment"
    figures.add(section, "searched", f"metrics endpoint while training, and {len(files)} files it wrote or logged "
                                     "(log, summary.json, termination message, checkpoints, model)")
    figures.add(section, "secret values found", 0)
    figures.add(section, "trainer metrics label names", sorted(labels))
    figures.add(section, "configuration values in trainer metrics", "none (no model, data or output location)")


# ------------------------------------------------------------------------------------------ RBAC

NEEDED = [("create", "jobs.batch"), ("patch", "jobs.batch"), ("watch", "jobs.batch"), ("list", "pods"),
          ("watch", "pods"), ("create", "events"), ("patch", "finetunejobs.finetune.io/status"),
          ("delete", "finetunejobs.finetune.io")]
FORBIDDEN = [("get", "secrets"), ("list", "secrets"), ("watch", "secrets"), ("create", "pods"),
             ("create", "pods/exec"), ("get", "configmaps"), ("create", "configmaps"), ("delete", "jobs.batch"), ("delete", "pods"),
             ("create", "roles.rbac.authorization.k8s.io"), ("create", "rolebindings.rbac.authorization.k8s.io"),
             ("create", "serviceaccounts/token"), ("update", "finetunejobs.finetune.io"),
             ("create", "persistentvolumeclaims"), ("create", "finetunejobs.finetune.io")]


def _can_i(env: Env, verb: str, resource: str, namespace: str | None) -> bool:
    where = ["-n", namespace] if namespace else ["--all-namespaces"]
    resource, _, subresource = resource.partition("/")
    sub = [f"--subresource={subresource}"] if subresource else []
    result = env.cp.kubectl("auth", "can-i", verb, resource, *sub, *where, kubeconfig=env.kubeconfig, check=False)
    return result.stdout.strip() == "yes"


@pytest.mark.cluster
def test_the_operator_has_the_least_privilege_it_needs(env: Env, figures) -> None:
    other = "default"
    granted = {f"{v} {r}": _can_i(env, v, r, env.ns) for v, r in NEEDED}
    assert all(granted.values()), granted
    forbidden_here = {f"{v} {r}": _can_i(env, v, r, env.ns) for v, r in FORBIDDEN}
    assert not any(forbidden_here.values()), forbidden_here
    elsewhere = {f"{v} {r}": _can_i(env, v, r, other) for v, r in NEEDED}
    assert not any(elsewhere.values()), elsewhere
    cluster_wide = {f"{v} {r}": _can_i(env, v, r, None) for v, r in
                    [("list", "finetunejobs.finetune.io"), ("list", "jobs.batch"), ("get", "secrets"),
                     ("list", "nodes"), ("create", "clusterrolebindings.rbac.authorization.k8s.io")]}
    assert not any(cluster_wide.values()), cluster_wide
    # The operator's own token really is refused, not just reported as such.
    read = env.cp.kubectl("get", "secret", "hf-token", "-n", env.ns, kubeconfig=env.kubeconfig, check=False)
    assert read.returncode != 0 and "Forbidden" in read.stderr, read.stderr
    rules = env.cp.kubectl("auth", "can-i", "--list", "-n", env.ns, kubeconfig=env.kubeconfig).stdout
    section = "security: operator RBAC (per-namespace install, the chart's Role)"
    figures.add(section, "granted in its namespace", sorted(k for k, v in granted.items() if v))
    figures.add(section, "refused in its namespace", sorted(forbidden_here))
    figures.add(section, f"refused in another namespace ({other})", sorted(elsewhere))
    figures.add(section, "refused cluster-wide", sorted(cluster_wide))
    figures.add(section, "kubectl get secret as the operator", read.stderr.strip()[:160])
    figures.add(section, "kubectl auth can-i --list", [line for line in rules.splitlines()[1:] if line.strip()])


# ------------------------------------------------------------------------------------------ namespaces

def _namespaces_in(obj, found: set[str]) -> set[str]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "namespace" and isinstance(value, str):
                found.add(value)
            _namespaces_in(value, found)
    elif isinstance(obj, list):
        for value in obj:
            _namespaces_in(value, found)
    return found


def test_rendered_children_only_name_objects_of_the_jobs_own_namespace() -> None:
    """Whatever a spec says, every object the operator renders lives in the FineTuneJob's namespace, and the
    references in it (envFrom secretRef, persistentVolumeClaim) have no namespace field: Kubernetes resolves them in
    the pod's namespace."""
    from finetune_operator.api import FineTuneJob
    from finetune_operator.render import build_attempt
    from finetune_operator.settings import Settings

    job = FineTuneJob.model_validate({
        "apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": "reach", "namespace": "team-a", "uid": "u"},
        "spec": {"model": {"source": "pvc://other-ns/models/m", "secretRef": {"name": "other-ns.hf-token"}},
                 "task": "causal-lm",
                 "dataset": {"source": "pvc://kube-system/data", "secretRef": {"name": "kube-system.token"}},
                 "strategy": {"type": "lora"}, "output": {"location": "pvc://other-ns/out"},
                 "resources": {"nodes": 2, "gpus": 1}}})
    objects = build_attempt(job, 1, Settings())
    assert _namespaces_in(objects, set()) == {"team-a"}
    pod = objects[-1]["spec"]["template"]["spec"]
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "other-ns.hf-token"}},
                                               {"secretRef": {"name": "kube-system.token"}}]
    claims = [v["persistentVolumeClaim"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert {c["claimName"] for c in claims} == {"other-ns", "kube-system"}  # claim names, in team-a
    assert all(set(c) <= {"claimName", "readOnly"} for c in claims)


@pytest.mark.cluster
def test_a_job_cannot_make_the_operator_read_or_mount_another_namespaces_objects(env: Env, figures) -> None:
    other = env.cp.create_namespace(f"rel-other-{uuid.uuid4().hex[:6]}")
    try:
        value = _planted("other-namespace")
        env.cp.apply([
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cross-secret", "namespace": other},
             "stringData": {"HF_TOKEN": value}},
            {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": "cross-claim", "namespace": other},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
        ])
        # Names of objects that exist only in the other namespace.
        env.apply_job("reach", model={"source": "hf://org/tiny-bert", "secretRef": {"name": "cross-secret"}},
                      dataset={"source": "pvc://cross-claim/data"})
        waiting = env.cp.wait_for(lambda: env.condition("reach", "Ready")["reason"] == "Unschedulable" and
                                  "cross-claim" in env.condition("reach", "Ready")["message"] and
                                  env.condition("reach", "Ready")["message"], timeout=60, what="reach waiting")
        [pod] = env.pods("reach")
        assert pod["metadata"]["namespace"] == env.ns and not pod["spec"].get("nodeName")
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]
                  if "persistentVolumeClaim" in v]
        assert sorted(claims) == ["ckpt", "cross-claim"]  # looked up in the job's namespace (no cross-claim there)
        everything = env.cp.kubectl("get", SEARCHED_KINDS, "-n", env.ns, "-o", "json").stdout
        assert not _leaks(everything + env.operator.log.read_text(), [value])
        created = env.cp.kubectl_json("get", "jobs,configmaps,pods", "-n", other, "-l", "finetune.io/job")["items"]
        assert not created  # nothing of the job's was created there
        section = "security: another namespace"
        figures.add(section, "secretRef/pvc:// naming objects that exist only in another namespace",
                    f"resolved in the job's namespace; pod not scheduled: {waiting[:170]}")
        figures.add(section, "the other namespace's secret value found in the job's namespace or operator log", 0)
        figures.add(section, "secretRef \"other-ns/secret\"", "not a Secret name: the apiserver refuses the trainer "
                                                             "Job (see the bad-input corpus)")
    finally:
        env.cp.kubectl("delete", "finetunejob", "reach", "-n", env.ns, "--wait=false", check=False)
        env.cp.delete_namespace(other)


@pytest.mark.cluster
def test_the_operator_metrics_expose_no_configuration(env: Env, figures) -> None:
    env.apply_job("observed", model={"source": "hf://org/very-specific-model-name"},
                  dataset={"source": "hf://very-specific-dataset"}, output={"location": "pvc://ckpt/very-specific-out"})
    env.wait_phase("observed", "Succeeded")
    time.sleep(1.5)  # one more poll round
    metrics = env.operator.metrics()
    # The FineTuneJob's namespace is a label (bounded: it ties reconcile errors and retries to a namespace); its
    # name and configuration are not.
    exposed = [v for v in ("very-specific", "hf-token", "registry.example", "pvc://", 'finetunejob="') if v in metrics]
    assert not exposed, exposed
    labels = set(re.findall(r"(\w+)=\"", metrics))
    allowed = {"phase", "result", "le", "version", "implementation", "major", "minor", "patchlevel", "generation",
               "namespace", "python"}
    assert labels <= allowed, labels - allowed
    names = sorted(set(re.findall(r"^(finetune_operator_\w+?)(?:_bucket|_count|_sum|_total)?[{ ]",
                                  metrics, re.M)))
    figures.add("security: metrics", "operator metric families", names)
    figures.add("security: metrics", "operator label names", sorted(labels))
    figures.add("security: metrics", "configuration values in operator metrics",
                "none (the namespace only; no job name, model, data, output, image or secret name)")
