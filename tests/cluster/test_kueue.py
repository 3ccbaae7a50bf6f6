"""FineTuneJobs under a real Kueue (tools/kueue/build.sh, run by kueue_process.py) on the local plane's KWOK GPU nodes.

Each test gets its own ClusterQueue with a quota of one GPU (one ResourceFlavor for the KWOK nodes, which have
``nvidia.com/gpu: 8`` each) and a LocalQueue in the operator's namespace; the FineTuneJobs ask for one GPU each and
name the LocalQueue in spec.queueName. Trainer pods are KWOK's (operator_process.py's hooks): they run until the
test completes or fails them. Priorities are Kubernetes PriorityClasses set in spec.resources.priorityClassName:
the pod template carries it, and Kueue takes a Workload's priority from it (no WorkloadPriorityClass label).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import pytest
import yaml

from finetune_operator.kube import Kube
from finetune_operator.manifest import load_finetunejob
from kueue_process import KUEUE_NAMESPACE_LABEL, running_kueue
from operator_process import REPO, RESTRICTED, RUN_FOREVER, Env, operator_env
from test_operator import INTERRUPTED

if TYPE_CHECKING:
    from conftest import ControlPlane

pytestmark = pytest.mark.cluster
LOW, HIGH = 100, 1000  # PriorityClass values


@pytest.fixture(scope="module")
def kueue(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running Kueue; yields the suffix of this module's cluster-scoped objects (flavor, priority classes)."""
    suffix = uuid.uuid4().hex[:6]
    cluster_objects = [
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": f"gpu-{suffix}"}},
        *({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": f"{name}-{suffix}"},
           "value": value, "description": "fto Kueue tests"} for name, value in (("low", LOW), ("high", HIGH))),
    ]
    with running_kueue(control_plane, tmp_path_factory.mktemp("kueue")):
        control_plane.apply(cluster_objects)
        try:
            yield suffix
        finally:
            for obj in cluster_objects:
                control_plane.kubectl("delete", obj["kind"].lower(), obj["metadata"]["name"], "--ignore-not-found",
                                      "--wait=false", check=False)


@pytest.fixture(scope="module")
def env(kueue: str, control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    labels = {**RESTRICTED, KUEUE_NAMESPACE_LABEL: "true"}  # Kueue's Job webhooks apply here
    with operator_env(control_plane, tmp_path_factory.mktemp("operator"), namespace_labels=labels,
                      prefix="fto-kueue") as environment:
        yield environment


@pytest.fixture
def queue(env: Env, kueue: str) -> Iterator[Callable[..., str]]:
    """Makes a ClusterQueue with a quota of 1 GPU and a LocalQueue for it in env's namespace; returns the
    LocalQueue's name. ``preempt``: a pending workload may preempt lower-priority admitted ones."""
    made: list[str] = []

    def make(preempt: bool = False) -> str:
        name = f"q-{uuid.uuid4().hex[:6]}"
        quota = [("cpu", "64"), ("memory", "256Gi"), ("nvidia.com/gpu", "1")]
        spec = {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": env.ns}},
            "queueingStrategy": "BestEffortFIFO",
            "resourceGroups": [{"coveredResources": [r for r, _ in quota], "flavors": [{
                "name": f"gpu-{kueue}", "resources": [{"name": r, "nominalQuota": q} for r, q in quota]}]}],
        }
        if preempt:
            spec["preemption"] = {"withinClusterQueue": "LowerPriority"}
        env.cp.apply([
            {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": name},
             "spec": spec},
            {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
             "metadata": {"name": name, "namespace": env.ns}, "spec": {"clusterQueue": name}},
        ])
        made.append(name)
        return name

    yield make
    env.cp.kubectl("delete", "finetunejobs", "--all", "-n", env.ns, "--wait=true", "--timeout=60s", check=False)
    for name in made:
        env.cp.kubectl("delete", "localqueue", name, "-n", env.ns, "--ignore-not-found", check=False)
        env.cp.kubectl("delete", "clusterqueue", name, "--ignore-not-found", "--wait=false", check=False)


# ------------------------------------------------------------------------------------------ helpers

def _apply(env: Env, name: str, queue: str, priority: str | None = None) -> None:
    resources = {"gpus": 1, "cpu": "1", "memory": "1Gi"}
    if priority:
        resources["priorityClassName"] = priority
    env.apply_job(name, pod_metadata=RUN_FOREVER, queueName=queue, resources=resources)


def _wait_reason(env: Env, name: str, reason: str, contains: str = "", timeout: float = 60) -> dict:
    """The Ready condition (which carries the latest reason and message) once it has ``reason``."""
    def reached() -> dict | None:
        ready = next((c for c in env.ftj(name).get("status", {}).get("conditions", []) if c["type"] == "Ready"),
                     None)
        return ready if ready and ready["reason"] == reason and contains in ready["message"] else None
    try:
        return env.cp.wait_for(reached, timeout=timeout, what=f"{name} {reason}")
    except AssertionError:
        raise AssertionError(f"{name} not {reason} ({contains!r}): {env.ftj(name).get('status')}\noperator log:\n"
                             f"{env.operator.log.read_text()[-3000:]}") from None


def _workload(env: Env, job: str) -> dict:
    uid = env.cp.kubectl_json("get", "job", job, "-n", env.ns)["metadata"]["uid"]
    [workload] = env.cp.kubectl_json("get", "workloads.kueue.x-k8s.io", "-n", env.ns,
                                     "-l", f"kueue.x-k8s.io/job-uid={uid}")["items"]
    return workload


def _suspended(env: Env, name: str) -> bool:
    return all(j["spec"].get("suspend") for j in env.jobs(name))


def _queued_behind(env: Env, first: str, second: str, queue: str) -> dict:
    """``first`` runs with the queue's only GPU; ``second`` waits: returns second's Ready condition."""
    _apply(env, first, queue)
    [pod] = env.wait_running_pods(first, 1)
    env.wait_phase(first, "Running")
    _apply(env, second, queue)
    return _wait_reason(env, second, "Queued", "insufficient unused quota")


# ------------------------------------------------------------------------------------------ tests

def test_kueue_second_job_waits_queued_with_kueues_reason(env: Env, queue: Callable[..., str]) -> None:
    q = queue()
    ready = _queued_behind(env, "first", "second", q)
    # Kueue's own words, from the Workload of Job second-a1.
    assert f"waits in Kueue LocalQueue {q}" in ready["message"]
    assert "nvidia.com/gpu" in ready["message"], ready["message"]
    ftj = env.ftj("second")
    assert ftj["status"]["phase"] == "Pending" and ftj["status"]["attempts"] == 1
    assert env.condition("second", "Queued")["status"] == "True"
    assert env.condition("first", "Queued")["status"] == "False"
    [job] = env.jobs("second")
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == q
    assert not env.pods("second")
    workload = _workload(env, "second-a1")
    reserved = next(c for c in workload["status"]["conditions"] if c["type"] == "QuotaReserved")
    assert reserved["status"] == "False" and reserved["message"] in ready["message"]
    assert "Queued" in [e["reason"] for e in env.events("second")]


def test_kueue_admits_the_queued_job_when_the_first_ends(env: Env, queue: Callable[..., str]) -> None:
    q = queue()
    _queued_behind(env, "one", "two", q)
    [pod] = env.pods("one")
    env.complete_pod(pod)
    env.wait_phase("one", "Succeeded")
    [pod2] = env.wait_running_pods("two", 1)  # Kueue admitted it: unsuspended the same Job
    env.wait_phase("two", "Running")
    assert env.condition("two", "Queued")["status"] == "False"
    assert [j["metadata"]["name"] for j in env.jobs("two")] == ["two-a1"]
    env.complete_pod(pod2)
    env.wait_phase("two", "Succeeded")
    # Out of Queued is told (events.py): as WaitingForPods (admitted) or TrainerRunning, whichever a pass saw first.
    reasons = {e["reason"] for e in env.events("two")}
    assert "Queued" in reasons and reasons & {"WaitingForPods", "TrainerRunning"}, reasons


def test_kueue_orders_by_the_priority_class(env: Env, queue: Callable[..., str], kueue: str) -> None:
    q = queue()  # no preemption: priority only orders the queue
    low, high = f"low-{kueue}", f"high-{kueue}"
    _apply(env, "busy", q, low)
    [busy] = env.wait_running_pods("busy", 1)
    _apply(env, "early-low", q, low)
    _wait_reason(env, "early-low", "Queued", "insufficient unused quota")
    _apply(env, "late-high", q, high)
    _wait_reason(env, "late-high", "Queued", "insufficient unused quota")
    # The priority class reached Kueue through the pod template's priorityClassName.
    workload = _workload(env, "late-high-a1")
    assert workload["spec"]["priority"] == HIGH
    assert workload["spec"]["priorityClassRef"]["name"] == high
    assert workload["spec"]["priorityClassRef"]["group"] == "scheduling.k8s.io"
    assert _workload(env, "early-low-a1")["spec"]["priority"] == LOW
    env.complete_pod(busy)
    [pod] = env.wait_running_pods("late-high", 1)  # created later, admitted first
    assert _suspended(env, "early-low")
    assert env.ftj("early-low")["status"]["phase"] == "Pending"
    env.complete_pod(pod)
    env.wait_running_pods("early-low", 1)


def test_kueue_preempted_job_shows_it_and_resumes_when_admitted_again(env: Env, queue: Callable[..., str],
                                                                     kueue: str) -> None:
    q = queue(preempt=True)
    _apply(env, "victim", q, f"low-{kueue}")
    env.wait_running_pods("victim", 1)
    env.wait_phase("victim", "Running")
    _apply(env, "urgent", q, f"high-{kueue}")
    # Kueue evicts the lower-priority workload: it suspends victim's Job (its pods stop: a trainer saves a
    # checkpoint on SIGTERM) and admits urgent.
    preempted = _wait_reason(env, "victim", "Preempted", "resumes from the last checkpoint")
    assert "Preempted to accommodate a workload" in preempted["message"], preempted["message"]
    assert env.ftj("victim")["status"]["phase"] == "Pending"
    assert env.condition("victim", "Queued")["status"] == "True"
    assert _suspended(env, "victim")
    env.cp.wait_for(lambda: not env.pods("victim"), timeout=30, what="victim's pods gone")
    [urgent] = env.wait_running_pods("urgent", 1)
    env.complete_pod(urgent)
    env.wait_phase("urgent", "Succeeded")
    # Admitted again: the same attempt's Job runs again, with the same config and output location, so the trainer
    # resumes from the checkpoint it saved there; it is not a new attempt and not a retry.
    [pod] = env.wait_running_pods("victim", 1)
    env.wait_phase("victim", "Running")
    ftj = env.ftj("victim")
    assert ftj["status"]["attempts"] == 1
    assert [j["metadata"]["name"] for j in env.jobs("victim")] == ["victim-a1"]
    assert pod["metadata"]["labels"]["finetune.io/attempt"] == "1"
    env.complete_pod(pod)
    env.wait_phase("victim", "Succeeded")
    reasons = [e["reason"] for e in env.events("victim")]
    # Running again after Preempted is told (the first start may be routine, without an Event: events.py).
    assert "Preempted" in reasons and set(reasons) & {"WaitingForPods", "TrainerRunning"}, reasons


def test_kueue_retry_keeps_its_priority_and_goes_first(env: Env, queue: Callable[..., str],
                                                                 kueue: str) -> None:
    """A retry is a new Job, so a new Workload, ordered by its own creation time: Kueue gives it no place of the
    failed attempt's. What it keeps is the job's priority: it goes before a lower-priority job that waited longer
    (or, where Kueue admitted that one in the moment between the failure and the retry's Job, preempts it)."""
    q = queue(preempt=True)
    _apply(env, "flaky", q, f"high-{kueue}")
    [pod] = env.wait_running_pods("flaky", 1)
    _apply(env, "patient", q, f"low-{kueue}")
    _wait_reason(env, "patient", "Queued", "insufficient unused quota")
    env.fail_pod(pod, 75, INTERRUPTED)  # retryable: attempt 2 resumes from the checkpoint
    [pod2] = env.wait_running_pods("flaky", 2)
    assert [j["metadata"]["name"] for j in env.jobs("flaky")] == ["flaky-a1", "flaky-a2"]
    job2 = next(j for j in env.jobs("flaky") if j["metadata"]["name"] == "flaky-a2")
    assert job2["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == q
    retry = _workload(env, "flaky-a2")
    assert retry["spec"]["priority"] == HIGH
    # A new Workload: ordered by its own creation time, after patient's (RFC 3339 seconds, so possibly equal).
    assert _workload(env, "patient-a1")["metadata"]["creationTimestamp"] <= retry["metadata"]["creationTimestamp"]
    ftj = env.ftj("flaky")
    assert ftj["status"]["checkpoint"] == {"location": "pvc://ckpt/run/checkpoints/step-40", "step": 40}
    env.cp.wait_for(lambda: _suspended(env, "patient") and env.ftj("patient")["status"]["phase"] == "Pending",
                    timeout=30, what="patient waiting (again)")
    env.complete_pod(pod2)
    env.wait_phase("flaky", "Succeeded")
    env.wait_running_pods("patient", 1)


def test_kueue_example_manifests_are_accepted(env: Env) -> None:
    """examples/kueue: Kueue's webhooks and the API server accept the queues, and the CRD the FineTuneJob
    (server-side dry run: nothing is created)."""
    queues = list(yaml.safe_load_all((REPO / "examples" / "kueue" / "queues.yaml").read_text()))
    for obj in queues:
        if obj["metadata"].get("namespace"):
            obj["metadata"]["namespace"] = env.ns
    assert {o["kind"] for o in queues} == {"ResourceFlavor", "ClusterQueue", "LocalQueue", "PriorityClass"}
    env.cp.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(queues))
    example = REPO / "examples" / "kueue" / "finetunejob.yaml"
    assert load_finetunejob(example).spec.queue_name == "gpu-team-a"
    env.cp.kubectl("apply", "--dry-run=server", "-n", env.ns, "-f", str(example))


def test_kueue_webhooks_serve_the_test_namespace(env: Env, queue: Callable[..., str]) -> None:
    """Kueue's own Job webhooks, on loopback with the fixture's certificate, answer for the test's namespace:
    the mutating one suspends a queued Job created running, the validating one refuses a bad queue name."""
    q = queue()

    def job(name: str, queue_name: str) -> str:
        return yaml.safe_dump({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": env.ns, "labels": {"kueue.x-k8s.io/queue-name": queue_name}},
            "spec": {"suspend": False, "template": {"spec": {"restartPolicy": "Never", "containers": [{
                "name": "c", "image": "busybox", "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}},
                "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "runAsUser": 1000,
                                    "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
            }]}}}})
    created = yaml.safe_load(env.cp.kubectl("create", "--dry-run=server", "-o", "yaml", "-f", "-",
                                            input=job("hook", q)).stdout)
    assert created["spec"]["suspend"] is True  # Kueue's defaulting webhook
    refused = env.cp.kubectl("create", "--dry-run=server", "-f", "-", input=job("bad", "Team_A"), check=False)
    assert refused.returncode != 0 and "vjob.kb.io" in refused.stderr, refused.stderr


def test_kueue_workloads_are_read_with_the_charts_role_and_without_one_the_pass_goes_on(
        env: Env, queue: Callable[..., str], tmp_path: Path) -> None:
    """The chart's Role lets the operator list Workloads; an operator whose Role lacks it reads none (a warning)
    instead of failing every pass of a queued job."""
    _apply(env, "listed", queue())
    env.wait_running_pods("listed", 1)
    uid = env.jobs("listed")[0]["metadata"]["uid"]
    [workload] = Kube.connect(str(env.kubeconfig)).list_workloads(env.ns, uid)  # the chart's ServiceAccount
    assert workload["metadata"]["labels"]["kueue.x-k8s.io/job-uid"] == uid
    env.cp.kubectl("create", "serviceaccount", "no-kueue-rule", "-n", env.ns)
    bare = env.cp.mint_kubeconfig(env.ns, "no-kueue-rule", tmp_path / "bare.kubeconfig")
    assert Kube.connect(str(bare)).list_workloads(env.ns, uid) == []
