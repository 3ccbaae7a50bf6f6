"""The Helm chart (charts/finetune-operator) rendered with `helm template`, without a cluster: lint, golden
manifests, the Deployment's contract with the operator's settings, least-privilege RBAC, the values schema, the
CRD copy, the Grafana dashboard against the live metric registries, and the images' install path.

The apiserver's view of the same manifests (server-side dry run, `helm install`) is tests/cluster/test_chart_cluster.py.
Regenerate the golden files with UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from helm_chart import ALL_ON, CHART, NAMESPACE, RELEASE, REPO, find, helm, one, render

GOLDEN = REPO / "tests" / "golden" / "chart"
DASHBOARD = CHART / "dashboards" / "finetune.json"
CRD = REPO / "crds" / "finetune.io_finetunejobs.yaml"
FULLNAME = f"{RELEASE}-finetune-operator"
LEASE_ROLE = f"{FULLNAME}-leader-election"


@pytest.fixture(scope="module")
def default() -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="module")
def all_on() -> list[dict[str, Any]]:
    return render(ALL_ON)


# ------------------------------------------------------------------------------------------ lint, golden

@pytest.mark.parametrize("values", [[], [ALL_ON]], ids=["default", "all-on"])
def test_helm_lint_is_clean(values: list[Path]) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    for path in values:
        args += ["--values", str(path)]
    out = helm(*args).stdout
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out, out


def _golden_view(objects: list[dict[str, Any]]) -> str:
    """The rendered objects, with the two large generated payloads replaced by what they are checked against
    elsewhere in this file (the CRD body: crds/; the dashboard: dashboards/finetune.json)."""
    view = []
    for obj in objects:
        obj = json.loads(json.dumps(obj))
        if obj["kind"] == "CustomResourceDefinition":
            obj["spec"] = "<crds/finetune.io_finetunejobs.yaml: test_chart_crd_is_the_generated_crd>"
        if obj["kind"] == "ConfigMap" and "finetune.json" in obj.get("data", {}):
            obj["data"]["finetune.json"] = "<dashboards/finetune.json: test_dashboard_configmap>"
        view.append(obj)
    return yaml.safe_dump_all(view, sort_keys=False, width=120)


@pytest.mark.parametrize("name", ["default", "all-on"])
def test_rendered_manifests_match_golden(name: str, request: pytest.FixtureRequest) -> None:
    text = _golden_view(request.getfixturevalue(name.replace("-", "_")))
    path = GOLDEN / f"{name}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"`helm template` output changed; if intended, rerun with UPDATE_GOLDEN=1 ({path})"


def test_default_objects(default: list[dict[str, Any]]) -> None:
    kinds = sorted(o["kind"] for o in default)
    assert kinds == sorted(["ServiceAccount", "ConfigMap", "CustomResourceDefinition", "ClusterRole", "ClusterRole",
                            "ClusterRole", "ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding", "Service",
                            "Deployment", "Job", "PodDisruptionBudget", "Role", "RoleBinding"])
    # Monitors are opt-in (they need the monitoring.coreos.com CRDs); every namespaced object names its namespace.
    for obj in default:
        if obj["kind"] not in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["kind"]


# ------------------------------------------------------------------------------------------ Deployment

def _env(deployment: dict[str, Any]) -> dict[str, str]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}  # valueFrom: test_leader_election


def assert_restricted(pod_spec: dict[str, Any]) -> None:
    """Pod Security Standards, "restricted" profile (what a namespace enforcing it admits)."""
    pod_sc = pod_spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] != 0
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod_spec["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["readOnlyRootFilesystem"] is True
        assert not sc.get("privileged") and all("hostPort" not in p for p in container.get("ports", []))
    assert all(set(v) <= {"name", "emptyDir", "configMap", "secret", "projected"} for v in pod_spec.get("volumes", []))
    assert not any(pod_spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))


def test_deployment(default: list[dict[str, Any]]) -> None:
    deployment = one(default, "Deployment", FULLNAME)
    spec = deployment["spec"]
    # Two replicas, one leading (leader election): a new pod comes up before an old one stops.
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == one(default, "ServiceAccount")["metadata"]["name"] == FULLNAME
    assert_restricted(pod)
    [container] = pod["containers"]
    assert container["image"] == "ghcr.io/finetune-operator/operator:0.1.0"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": 8080, "health": 8081}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # Only /tmp is writable, and it is an emptyDir.
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    env = _env(deployment)
    assert "FINETUNE_NAMESPACES" not in env  # cluster-wide by default
    assert env["FINETUNE_TRAINER_IMAGE"] == "ghcr.io/finetune-operator/trainer:0.1.0"
    assert (env["FINETUNE_METRICS_PORT"], env["FINETUNE_HEALTH_PORT"]) == ("8080", "8081")


def test_deployment_env_is_what_the_operator_reads(all_on: list[dict[str, Any]]) -> None:
    """Every FINETUNE_* variable the chart sets is a Settings field (or the runner's log level), and parses."""
    from finetune_operator.settings import ENV_PREFIX, Settings

    env = _env(one(all_on, "Deployment"))
    fields = {f.upper() for f in Settings.__dataclass_fields__}
    for name in env:
        assert name.startswith(ENV_PREFIX) and (name[len(ENV_PREFIX):] in fields or name == "FINETUNE_LOG_LEVEL"), name
    settings = Settings.from_env(env)
    assert settings.namespaces == ("ml-team-a", "ml-team-b")
    assert settings.trainer_image == "registry.example/finetune-trainer:0.1.0-cpu"
    assert settings.image_pull_policy == "Always" and settings.gpu_resource == "amd.com/gpu"
    assert (settings.metrics_port, settings.health_port, settings.trainer_metrics_port) == (9180, 9181, 9190)
    assert settings.poll_interval == 5.0 and settings.termination_grace_seconds == 600
    assert settings.workers == 24
    # One threshold for the Stalled condition and the FineTuneJobStalled alert; the price table as the operator
    # reads it.
    assert settings.stalled_after_seconds == 1200.0
    from finetune_operator.pricing import parse_prices

    prices = parse_prices(settings.prices)
    assert prices.currency == "EUR" and prices.for_selector({"gpu": "h100"}).gpu_hour == 9.8
    assert prices.for_selector({}).gpu_hour == 2.5
    assert json.loads(settings.notify_sinks) == [{"url": "https://events.example/finetune"}, {
        "url": "https://hooks.slack.example/services/T0/B0/x", "format": "slack"}]
    assert settings.notify_signing_key_file == "/etc/finetune/notify/signing-key"
    assert (settings.notify_job_sinks, settings.notify_queue_size, settings.notify_max_tries,
            settings.notify_timeout) == (False, 200, 5, 2.5)
    [container] = one(all_on, "Deployment")["spec"]["template"]["spec"]["containers"]
    pod = one(all_on, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "notify-signing-key", "mountPath": "/etc/finetune/notify", "readOnly": True} in container["volumeMounts"]
    assert {"name": "notify-signing-key", "secret": {"secretName": "finetune-notify", "items": [
        {"key": "hmac", "path": "signing-key"}]}} in pod["volumes"]


def test_all_on_pod_settings(all_on: list[dict[str, Any]]) -> None:
    deployment = one(all_on, "Deployment", "fto-all-on")
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"]["example.com/tier"] == "control"
    assert template["metadata"]["annotations"] == {"example.com/team": "platform"}
    pod = template["spec"]
    assert_restricted(pod)
    assert pod["serviceAccountName"] == "fto-operator"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}] and pod["priorityClassName"] == "platform-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"} and pod["tolerations"][0]["key"] == "dedicated"
    assert pod["containers"][0]["image"] == "registry.example/finetune-operator:0.1.0-rc1"
    service = one(all_on, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9180, "targetPort": "metrics", "protocol": "TCP"}]


# ------------------------------------------------------------------------------------------ RBAC

OPERATOR_RULES = {  # (apiGroup, resource) -> verbs; see the comment on finetune-operator.rules in _helpers.tpl
    ("finetune.io", "finetunejobs"): {"get", "list", "watch", "patch", "delete"},
    ("finetune.io", "finetunejobs/status"): {"get", "patch"},
    ("finetune.io", "finetunejobs/finalizers"): {"update"},
    ("batch", "jobs"): {"create", "list", "watch", "patch"},
    ("", "pods"): {"list", "watch"},
    ("", "services"): {"create"},  # no ConfigMaps: the trainer's config is in the Job (render.py)
    ("", "events"): {"create"},
    ("kueue.x-k8s.io", "workloads"): {"list"},
}
CRD_READ = {("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"}}


def _verbs(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    verbs: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule  # no resourceNames/nonResourceURLs
        for value in (*rule["apiGroups"], *rule["resources"], *rule["verbs"]):
            assert "*" not in value, f"wildcard in {role['kind']} {role['metadata']['name']}: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                verbs.setdefault((group, resource), set()).update(rule["verbs"])
    return verbs


AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"


def _operator_roles(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The operator's own roles, without the ones aggregated into the built-in roles for people."""
    return [r for r in find(objects, kind) if not any(k.startswith(AGGREGATE) for k in r["metadata"]["labels"])]


def test_rbac_cluster_wide(default: list[dict[str, Any]]) -> None:
    roles = {r["metadata"]["name"]: _verbs(r) for r in _operator_roles(default, "ClusterRole")}
    assert roles == {FULLNAME: OPERATOR_RULES, f"{FULLNAME}-discovery": CRD_READ}
    assert [r["metadata"]["name"] for r in find(default, "Role") + find(default, "RoleBinding")] == [LEASE_ROLE] * 2
    for binding in find(default, "ClusterRoleBinding"):
        assert binding["roleRef"]["name"] == binding["metadata"]["name"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]


def test_rbac_per_namespace(all_on: list[dict[str, Any]]) -> None:
    [discovery] = _operator_roles(all_on, "ClusterRole")  # nothing about FineTuneJobs is granted cluster-wide
    assert _verbs(discovery) == {**CRD_READ, ("", "namespaces"): {"list", "watch"}}
    roles = [r for r in find(all_on, "Role") if r["metadata"]["name"] != "fto-all-on-leader-election"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml-team-a", "ml-team-b"]
    assert all(_verbs(r) == OPERATOR_RULES for r in roles)
    for binding in find(all_on, "RoleBinding"):
        if binding["metadata"]["name"] == "fto-all-on-leader-election":
            continue
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "fto-all-on"}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "fto-operator", "namespace": NAMESPACE}]


def test_leader_election(default: list[dict[str, Any]], all_on: list[dict[str, Any]]) -> None:
    """One Lease per release, named after it, in its namespace; the RBAC for exactly that Lease; a PodDisruptionBudget
    and preferred spreading across nodes (docs/cluster.md, "High availability")."""
    from finetune_operator.settings import Settings

    deployment = one(default, "Deployment", FULLNAME)
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert {"name": "FINETUNE_LEADER_ELECTION_IDENTITY",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]  # the pod's name
    settings = Settings.from_env(_env(deployment))
    assert settings.leader_election and settings.leader_election_name == FULLNAME
    assert settings.leader_election_namespace == NAMESPACE
    assert (settings.lease_duration_seconds, settings.lease_renew_deadline_seconds,
            settings.lease_retry_period_seconds) == (10, 7, 2)
    all_on_settings = Settings.from_env(_env(one(all_on, "Deployment")))
    assert (all_on_settings.lease_duration_seconds, all_on_settings.lease_renew_deadline_seconds,
            all_on_settings.lease_retry_period_seconds) == (20, 15, 4)
    assert one(all_on, "Deployment")["spec"]["replicas"] == 3
    [term] = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    pdb = one(default, "PodDisruptionBudget", FULLNAME)
    assert pdb["spec"] == {"minAvailable": 1, "selector": deployment["spec"]["selector"]}
    role = one(default, "Role", LEASE_ROLE)
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [FULLNAME],
         "verbs": ["get", "update"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]}]
    binding = one(default, "RoleBinding", LEASE_ROLE)
    assert binding["roleRef"]["name"] == LEASE_ROLE
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]


def test_without_leader_election_one_pod_is_recreated() -> None:
    objects = render(sets=("leaderElection.enabled=false", "replicas=1"))
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "affinity" not in deployment["spec"]["template"]["spec"]
    assert not find(objects, "PodDisruptionBudget") and not find(objects, "Role")
    assert not [name for name in _env(deployment) if "LEADER" in name or "LEASE" in name]
    two = helm("template", "x", str(CHART), "--set", "leaderElection.enabled=false", check=False)
    assert two.returncode != 0 and "replicas: more than 1 operator pod needs leaderElection.enabled=true" in two.stderr
    slow = helm("template", "x", str(CHART), "--set", "leaderElection.renewDeadlineSeconds=10", check=False)
    assert slow.returncode != 0
    assert "leaseDurationSeconds > renewDeadlineSeconds > retryPeriodSeconds" in slow.stderr


def test_rbac_and_service_account_can_be_left_to_the_admin() -> None:
    objects = render(sets=("rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=ops"))
    assert not [o for o in objects if o["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")]
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    missing = helm("template", "x", str(CHART), "--set", "serviceAccount.create=false", check=False)
    assert missing.returncode != 0 and "serviceAccount.name is required" in missing.stderr


def test_aggregated_cluster_roles_for_view_edit_and_admin(default: list[dict[str, Any]]) -> None:
    """People bound to the built-in roles may use FineTuneJobs, as they may use built-in kinds: `view` reads them,
    `edit` and `admin` also write them. tests/cluster/test_chart_cluster.py asks the API server (`can-i --as`)."""
    own = _operator_roles(default, "ClusterRole")
    roles = {r["metadata"]["name"]: r for r in find(default, "ClusterRole") if r not in own}
    view, edit = roles.pop(f"{FULLNAME}-view"), roles.pop(f"{FULLNAME}-edit")
    assert not roles
    labels = lambda role: {k.removeprefix(AGGREGATE) for k, v in role["metadata"]["labels"].items()
                           if k.startswith(AGGREGATE) and v == "true"}
    assert labels(view) == {"view", "edit", "admin"} and labels(edit) == {"edit", "admin"}
    assert _verbs(view) == {("finetune.io", "finetunejobs"): {"get", "list", "watch"},
                            ("finetune.io", "finetunejobs/status"): {"get", "list", "watch"}}
    assert _verbs(edit) == {("finetune.io", "finetunejobs"): {"create", "update", "patch", "delete",
                                                              "deletecollection"}}
    assert not find(render(sets=("rbac.aggregateClusterRoles=false",)), "ClusterRole", f"{FULLNAME}-view")


def test_watch_list_defaults_to_the_release_namespace() -> None:
    objects = render(sets=("rbac.clusterWide=false",))
    assert [(r["metadata"]["name"], r["metadata"]["namespace"]) for r in find(objects, "Role")] == [
        (LEASE_ROLE, NAMESPACE), (FULLNAME, NAMESPACE)]
    assert _env(one(objects, "Deployment"))["FINETUNE_NAMESPACES"] == NAMESPACE


# ------------------------------------------------------------------------------------------ values schema

BAD_VALUES = [  # (values file, what the error must name)
    ("replica: 2\n", "additional properties 'replica' not allowed"),
    ("replicas: 0\n", "'/replicas': minimum"),
    ("leaderElection:\n  leaseSeconds: 15\n", "'/leaderElection': additional properties 'leaseSeconds'"),
    ("monitoring:\n  serviceMonitor:\n    enable: true\n", "'/monitoring/serviceMonitor': additional properties 'enable'"),
    ("operator:\n  metricsPort: '8080'\n", "'/operator/metricsPort': got string, want integer"),
    ("operator:\n  logLevel: LOUD\n", "'/operator/logLevel'"),
    ("rbac:\n  clusterWide: 'no'\n", "'/rbac/clusterWide': got string, want boolean"),
    ("namespaces: [Team_A]\n", "'/namespaces/0'"),
    ("trainer:\n  image:\n    repo: x\n", "'/trainer/image': additional properties 'repo'"),
    ("resources:\n  limits:\n    gpu: 1\n", "'/resources/limits': additional properties 'gpu'"),
    ("dashboard:\n  labels:\n    grafana_dashboard: 1\n", "'/dashboard/labels/grafana_dashboard': got number, want string"),
    ("test:\n  image:\n    repository: python\n", "'/test/image/tag': minLength"),
]


@pytest.mark.parametrize("text, named", BAD_VALUES, ids=[t.split(":")[0] for t, _ in BAD_VALUES])
def test_schema_refuses_bad_values_and_names_the_field(text: str, named: str, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(text)
    proc = helm("template", "x", str(CHART), "--values", str(values), check=False)
    assert proc.returncode != 0, f"accepted:\n{text}"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert named in proc.stderr, proc.stderr


def _objects(schema: dict[str, Any], path: str = "$"):
    if schema.get("type") == "object":
        yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from _objects(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _objects(schema["items"], f"{path}[]")


def test_schema_is_closed_at_every_object_level() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    objects = list(_objects(schema))
    assert len(objects) > 20
    for path, node in objects:
        extra = node.get("additionalProperties")
        if path == "$.global":
            continue  # a parent chart's, whatever it holds
        # false, or a typed map (labels, annotations, nodeSelector: string values only)
        assert extra is False or extra == {"type": "string"}, f"{path} is open: additionalProperties={extra!r}"
    # Every default is described by the schema (a key missing from it would fail lint; this says which).
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) == set(schema["properties"])


# ------------------------------------------------------------------------------------------ CRD

def _sync_tool():
    spec = importlib.util.spec_from_file_location("sync_chart_crd", REPO / "tools" / "sync-chart-crd.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chart_crd_is_the_generated_crd(default: list[dict[str, Any]]) -> None:
    tool = _sync_tool()
    assert tool.TARGET.read_text() == tool.render(CRD.read_text()), (
        "charts/finetune-operator/templates/crd.yaml is stale: run tools/sync-chart-crd.py")
    rendered = one(default, "CustomResourceDefinition")
    expected = yaml.safe_load(CRD.read_text())
    expected["metadata"]["annotations"] = {"helm.sh/resource-policy": "keep"}
    assert rendered == expected


def test_crd_can_be_left_out() -> None:
    assert not find(render(sets=("crds.install=false",)), "CustomResourceDefinition")


# ------------------------------------------------------------------------------------------ monitoring

def test_monitors_select_the_operator_and_the_trainer_pods(all_on: list[dict[str, Any]]) -> None:
    from finetune_operator.api import FineTuneJob
    from finetune_operator.names import LABEL_FINETUNEJOB
    from finetune_operator.render import build_job
    from finetune_operator.settings import Settings

    service_monitor, pod_monitor = one(all_on, "ServiceMonitor"), one(all_on, "PodMonitor")
    for monitor in (service_monitor, pod_monitor):
        labels = monitor["metadata"]["labels"]
        assert labels["release"] == "prometheus" and labels["team"] == "platform"  # monitoring.labels
    service = one(all_on, "Service")
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service_monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert service_monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}

    # The PodMonitor matches the pods the operator renders: the label it selects on, the port name it scrapes.
    ftj = FineTuneJob.model_validate({
        "apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": "mrpc", "namespace": "ml-team-a", "uid": "u1", "generation": 1},
        "spec": {"model": {"source": "hf://org/tiny-bert"}, "task": "sequence-classification",
                 "dataset": {"source": "hf://glue?config=mrpc"}, "strategy": {"type": "partial", "layers": "last:2"},
                 "output": {"location": "pvc://ckpt/mrpc"}}})
    template = build_job(ftj, 1, Settings(trainer_metrics_port=9190))["spec"]["template"]
    spec = pod_monitor["spec"]
    assert spec["selector"] == {"matchExpressions": [{"key": LABEL_FINETUNEJOB, "operator": "Exists"}]}
    assert LABEL_FINETUNEJOB in template["metadata"]["labels"]
    [endpoint] = spec["podMetricsEndpoints"]
    ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
    assert ports[endpoint["port"]] == 9190
    # The trainer's finetunejob label does not collide with Prometheus' job label: nothing to honour.
    assert "honorLabels" not in endpoint
    # Only the pods that serve metrics are targets: single-node pods (no completion index) and rank 0.
    [keep] = [r for r in endpoint["relabelings"] if r.get("action") == "keep"]
    assert keep["sourceLabels"] == ["__meta_kubernetes_pod_label_batch_kubernetes_io_job_completion_index"]
    assert all(re.fullmatch(keep["regex"], v) for v in ("", "0"))
    assert not any(re.fullmatch(keep["regex"], v) for v in ("1", "10"))
    # The operator's namespace label (the FineTuneJob's) wins over the target's.
    assert service_monitor["spec"]["endpoints"][0]["honorLabels"] is True
    assert spec["namespaceSelector"] == {"matchNames": ["ml-team-a", "ml-team-b"]}


def test_pod_monitor_watches_every_namespace_when_cluster_wide() -> None:
    objects = render(sets=("monitoring.podMonitor.enabled=true",))
    assert one(objects, "PodMonitor")["spec"]["namespaceSelector"] == {"any": True}
    assert one(objects, "PodMonitor")["metadata"]["labels"]["release"] == "kube-prometheus-stack"


# ------------------------------------------------------------------------------------------ dashboard

def test_dashboard_configmap(default: list[dict[str, Any]], all_on: list[dict[str, Any]]) -> None:
    config_map = one(default, "ConfigMap", f"{FULLNAME}-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == NAMESPACE
    assert json.loads(config_map["data"]["finetune.json"]) == json.loads(DASHBOARD.read_text())
    moved = one(all_on, "ConfigMap", "fto-all-on-dashboard")
    assert moved["metadata"]["namespace"] == "monitoring"
    assert moved["metadata"]["labels"]["grafana_dashboard"] == "true"
    assert moved["metadata"]["annotations"] == {"grafana_folder": "Machine learning"}
    assert not find(render(sets=("dashboard.enabled=false",)), "ConfigMap")


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    out = [(f"panel {p['title']!r}", t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            selector = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert selector, f"variable {var['name']}: {query}"
            out.append((f"variable {var['name']}", selector.group(1)))
    return out


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, label names and strings removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", expr):
        if expr[match.end():].lstrip().startswith("(") or match.group().lower() in PROMQL_WORDS:
            continue  # a function or aggregation, or a keyword
        names.add(match.group())
    return names


def test_metric_name_parser() -> None:
    expr = ('histogram_quantile(0.95, sum by (job, le) (rate(a_bucket{job=~"$job", x="y(z)"}[$__rate_interval])))'
            ' / on (job) group_left b_total + max without (pod) (c) * 1e3')
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


def _exported(registry) -> set[str]:
    """Series names a registry exposes, including those of labelled metrics that have no child yet."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}
    names = set()
    for family in registry.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def test_every_dashboard_metric_is_exported() -> None:
    from prometheus_client import REGISTRY

    import finetune_operator.metrics  # noqa: F401 - registers the operator's metrics on the global registry
    from finetune_trainer.telemetry import Telemetry

    exported = _exported(Telemetry("probe").registry) | _exported(REGISTRY)
    used: dict[str, str] = {}
    for where, expr in _queries(_dashboard()):
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr}"
        used.update({name: where for name in names})
    # DCGM_FI_*: NVIDIA dcgm-exporter's, the optional source of the GPU utilisation and memory panels.
    missing = {name: where for name, where in used.items() if name not in exported and not name.startswith("DCGM_FI_")}
    assert not missing, f"dashboard queries use metrics nobody exports: {missing}"
    # Each area the dashboard promises is backed by its metric.
    for name in ("finetune_trainer_train_loss", "finetune_trainer_eval_loss", "finetune_trainer_eval_metric",
                 "finetune_trainer_learning_rate", "finetune_trainer_samples_total",
                 "finetune_trainer_tokens_total", "finetune_trainer_progress_ratio",
                 "finetune_trainer_eta_seconds", "finetune_trainer_checkpoint_save_seconds_bucket",
                 "finetune_trainer_gpu_memory_peak_bytes", "finetune_trainer_mfu_ratio", "finetune_operator_jobs",
                 "finetune_operator_attempts_total", "finetune_operator_retries_total",
                 "finetune_operator_reconcile_total", "finetune_operator_build_info",
                 "finetune_operator_requested_gpu_seconds_total", "finetune_operator_estimated_cost_total",
                 "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED"):
        assert name in used, f"no panel shows {name}"


def test_dashboard_queries_use_the_datasource_variable_and_rate_interval() -> None:
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["finetunejob"]["definition"].startswith("label_values(finetune_trainer_step")
    assert variables["finetunejob"]["definition"].endswith(", finetunejob)")
    source = {"type": "prometheus", "uid": "${datasource}"}
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == source, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == source, panel["title"]
            expr = target["expr"]
            for window in re.findall(r"\b(?:i?rate|increase)\([^\[]*\[([^\]]+)\]", expr):
                allowed = {"$__rate_interval"} if "increase" not in expr else {"$__rate_interval", "$__range"}
                assert window in allowed, f"{panel['title']}: range [{window}] in {expr}"
            if expr.startswith("finetune_trainer") or "finetune_trainer_" in expr:
                assert 'finetunejob=~"$finetunejob"' in expr, f"{panel['title']}: not filtered by the job: {expr}"
            assert not re.search(r"\bjob\b", expr.replace("finetunejob", "")), f"{panel['title']}: job label: {expr}"
            # Counters are only read through rate()/increase(); there are no pre-computed per-second gauges.
            for name in metric_names(expr):
                if name.endswith("_total") or name.endswith(("_bucket", "_sum", "_count")):
                    assert re.search(rf"(?:rate|increase)\({re.escape(name)}\b", expr), f"{name} not rated: {expr}"
                assert not name.endswith("_per_second"), expr
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "finetune-operator"


# ------------------------------------------------------------------------------------------ helm test, images

def test_helm_test_hook(default: list[dict[str, Any]], all_on: list[dict[str, Any]]) -> None:
    job = one(default, "Job", f"{FULLNAME}-test")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "test"
    pod = job["spec"]["template"]["spec"]
    assert_restricted(pod)
    assert pod["automountServiceAccountToken"] is False
    [container] = pod["containers"]
    assert container["image"] == "ghcr.io/finetune-operator/operator:0.1.0"  # already on the node
    service = one(default, "Service")
    assert f"http://{service['metadata']['name']}.{NAMESPACE}.svc:8080/metrics" in container["command"][-1]
    assert one(all_on, "Job")["spec"]["template"]["spec"]["containers"][0]["image"] == \
        "registry.example/python:3.11-slim"


def test_images_install_through_the_same_script_as_ci() -> None:
    """One install path: the Dockerfile, the Makefile (README commands) and .ci/run all go through
    tools/install.sh; none of them pip-installs the project on its own."""
    dockerfile = (REPO / "Dockerfile").read_text()
    runs = [line for line in re.sub(r"\\\n", " ", dockerfile).splitlines() if line.startswith("RUN ")]
    installs = [line for line in runs if "install" in line]
    assert any("tools/install.sh --venv /opt/venv operator" in line for line in installs)
    assert any("tools/install.sh --venv /opt/venv trainer" in line for line in installs)
    assert not re.search(r"\bpip3? install\b", dockerfile), "the Dockerfile pip-installs outside tools/install.sh"
    targets = set(re.findall(r"^FROM \S+ AS (\w+)", dockerfile, re.M))
    assert {"operator", "trainer"} <= targets
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^\t+tools/install\.sh ", makefile, re.M)
    assert not re.search(r"\bpip3? install\b", makefile)
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci and not re.search(r"\bpip3? install\b", ci)
