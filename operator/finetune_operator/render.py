"""Pure builders of the objects one attempt of a FineTuneJob runs as: a ConfigMap with the trainer's config, a
batch/v1 Job of trainer pods and, for multi-node jobs, the headless Service their rendezvous goes through.

Every child of attempt N is named ``<job>-a<N>`` (deterministic, so a retried reconcile finds what an earlier one
created instead of creating it twice) and carries an owner reference to the FineTuneJob (so deleting the job
deletes them). Nothing here talks to the API; kube.py creates what these functions return.
"""

from __future__ import annotations

from typing import Any

import yaml

from finetune_operator.api import API_VERSION, KIND, FineTuneJob, trainer_config
from finetune_operator.settings import Settings
from finetune_trainer.config import EXIT_PERMANENT, TrainerConfig

LABEL_JOB = "finetune.io/job"
LABEL_ATTEMPT = "finetune.io/attempt"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
MANAGED_BY = "finetune-operator"
CONTAINER = "trainer"
CONFIG_DIR = "/etc/finetune"
CONFIG_FILE = "config.yaml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_FILE}"
# Where checkpoints go when spec.output.location is unset: pod-local, so they do not survive the attempt.
SCRATCH_OUTPUT = "/var/lib/finetune/output"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
PVC_SCHEME = "pvc://"


def attempt_name(job_name: str, attempt: int) -> str:
    return f"{job_name}-a{attempt}"


def selector_labels(job_name: str, attempt: int) -> dict[str, str]:
    return {LABEL_JOB: job_name, LABEL_ATTEMPT: str(attempt)}


def labels(job_name: str, attempt: int) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "finetune-trainer",
        "app.kubernetes.io/instance": job_name,
        "app.kubernetes.io/component": "trainer",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        **selector_labels(job_name, attempt),
    }


def owner_reference(job: FineTuneJob) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.metadata.name,
        "uid": job.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(job: FineTuneJob, attempt: int, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": attempt_name(job.metadata.name, attempt),
        "namespace": job.metadata.namespace,
        "labels": {**labels(job.metadata.name, attempt), **(extra_labels or {})},
        "ownerReferences": [owner_reference(job)],
    }


# ---------------------------------------------------------------------------------------------- storage

def _claim_of(location: str | None) -> str | None:
    if location and location.startswith(PVC_SCHEME):
        return location[len(PVC_SCHEME):].split("/", 1)[0]
    return None


def _claims(job: FineTuneJob) -> dict[str, bool]:
    """Each claim the job reads or writes -> whether it is mounted read-only (only inputs live on it)."""
    spec = job.spec
    claims: dict[str, bool] = {}
    for location in (spec.model.source, spec.dataset.source):
        claim = _claim_of(location)
        if claim:
            claims.setdefault(claim, True)
    output = _claim_of(spec.output.location)
    if output:
        claims[output] = False
    return dict(sorted(claims.items()))


def output_location(job: FineTuneJob) -> str:
    return job.spec.output.location or SCRATCH_OUTPUT


def _volumes(job: FineTuneJob, attempt: int, settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": attempt_name(job.metadata.name, attempt)}},
        # The root filesystem is read-only: /tmp takes the caches (HF_HOME), torchrun's files and temp files.
        {"name": "tmp", "emptyDir": {}},
        # The container runtime's 64Mi /dev/shm is too small for DataLoader workers and NCCL.
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    for index, (claim, read_only) in enumerate(_claims(job).items()):
        name, ro = f"pvc-{index}", {"readOnly": True} if read_only else {}
        volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim, **ro}})
        mounts.append({"name": name, "mountPath": f"{settings.pvc_mount_root}/{claim}", **ro})
    if not job.spec.output.location:
        volumes.append({"name": "output", "emptyDir": {}})
        mounts.append({"name": "output", "mountPath": SCRATCH_OUTPUT})
    return volumes, mounts


# ---------------------------------------------------------------------------------------------- config

def build_trainer_config(job: FineTuneJob, settings: Settings) -> TrainerConfig:
    """The trainer's config as the pod sees it. ``pvc://`` locations stay as the user wrote them: the trainer
    finds each claim under $FINETUNE_PVC_ROOT (where _volumes mounts it) and reports its checkpoints and model
    as ``pvc://`` URIs, so status shows locations a user can use, not the pod's mount paths."""
    return trainer_config(job, output_location(job), metrics_port=settings.trainer_metrics_port)


def build_config_map(job: FineTuneJob, attempt: int, settings: Settings) -> dict[str, Any]:
    config = build_trainer_config(job, settings)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, attempt),
        "data": {CONFIG_FILE: yaml.safe_dump(config.wire(), sort_keys=False, width=120)},
    }


# ---------------------------------------------------------------------------------------------- service

def build_service(job: FineTuneJob, attempt: int, settings: Settings) -> dict[str, Any]:
    """Headless Service that gives each rank a DNS name (<job>-a<N>-<index>.<job>-a<N>) for the rendezvous."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, attempt),
        "spec": {
            "clusterIP": "None",
            # Ranks resolve rank 0 while it starts, before any pod is Ready.
            "publishNotReadyAddresses": True,
            "selector": selector_labels(job.metadata.name, attempt),
            "ports": [{"name": "rendezvous", "port": settings.rendezvous_port, "targetPort": "rendezvous"}],
        },
    }


# ---------------------------------------------------------------------------------------------- job

def trainer_command(job: FineTuneJob, attempt: int, settings: Settings) -> list[str]:
    trainer = ["-m", "finetune_trainer", "--config", CONFIG_PATH]
    resources = job.spec.resources
    if resources.nodes > 1:
        name = attempt_name(job.metadata.name, attempt)
        return [
            "torchrun",
            f"--nnodes={resources.nodes}",
            # One rank per GPU; on CPU nodes one rank per node (gloo), which already uses all the node's cores.
            f"--nproc-per-node={max(resources.gpus, 1)}",
            # The kubelet expands $(VAR) from the container's env: the rank is the pod's completion index.
            "--node-rank=$(JOB_COMPLETION_INDEX)",
            f"--master-addr={name}-0.{name}",
            f"--master-port={settings.rendezvous_port}",
            # A failed rank fails the attempt; the operator restarts the whole gang from the checkpoint.
            "--max-restarts=0",
            *trainer,
        ]
    if resources.gpus > 1:
        return ["torchrun", "--standalone", f"--nproc-per-node={resources.gpus}", *trainer]
    return ["python", *trainer]


def _resources(job: FineTuneJob, settings: Settings) -> dict[str, Any]:
    spec = job.spec.resources
    amounts: dict[str, str] = {}
    if spec.cpu:
        amounts["cpu"] = spec.cpu
    if spec.memory:
        amounts["memory"] = spec.memory
    if spec.gpus:
        amounts[spec.gpu_resource or settings.gpu_resource] = str(spec.gpus)
    # Requests equal limits: the trainer sizes its threads from the CPU quota, and a GPU job is not overcommitted.
    return {"requests": amounts, "limits": dict(amounts)} if amounts else {}


def _env(job: FineTuneJob, attempt: int, settings: Settings) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "FINETUNE_JOB_NAME", "value": job.metadata.name},
        {"name": "FINETUNE_ATTEMPT", "value": str(attempt)},
        {"name": "FINETUNE_PVC_ROOT", "value": settings.pvc_mount_root},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/tmp/huggingface"},
    ]
    if job.spec.resources.nodes > 1:
        # Declared (the Job controller would inject it too) so that the command's $(JOB_COMPLETION_INDEX) expands.
        env.append({"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
            "fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}}})
    return env


def _secret_refs(job: FineTuneJob) -> list[dict[str, Any]]:
    names = [ref.name for ref in (job.spec.model.secret_ref, job.spec.dataset.secret_ref) if ref]
    return [{"secretRef": {"name": name}} for name in dict.fromkeys(names)]


def _container(job: FineTuneJob, attempt: int, settings: Settings, mounts: list[dict[str, Any]]) -> dict[str, Any]:
    ports = [{"name": "metrics", "containerPort": settings.trainer_metrics_port}]
    if job.spec.resources.nodes > 1:
        ports.append({"name": "rendezvous", "containerPort": settings.rendezvous_port})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": job.spec.image or settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": trainer_command(job, attempt, settings),
        "env": _env(job, attempt, settings),
        "envFrom": _secret_refs(job),
        "ports": ports,
        "resources": _resources(job, settings),
        "volumeMounts": mounts,
        # The trainer's JSON summary; if it crashes before writing one, the log tail says why.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
    }
    return {k: v for k, v in container.items() if v not in ([], {})}


def _pod_template(job: FineTuneJob, attempt: int, settings: Settings) -> dict[str, Any]:
    spec, name = job.spec, attempt_name(job.metadata.name, attempt)
    volumes, mounts = _volumes(job, attempt, settings)
    extra = spec.pod_metadata
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # The trainer never talks to the Kubernetes API.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": settings.termination_grace_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            "fsGroup": settings.run_as_user,  # so the trainer can write to the output volume
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(job, attempt, settings, mounts)],
        "volumes": volumes,
    }
    if spec.resources.nodes > 1:
        pod_spec["subdomain"] = name  # pod hostnames <name>-<index> resolve through the headless Service
    if spec.resources.node_selector:
        pod_spec["nodeSelector"] = dict(spec.resources.node_selector)
    if spec.resources.tolerations:
        pod_spec["tolerations"] = [t.wire() for t in spec.resources.tolerations]
    if spec.resources.priority_class_name:
        pod_spec["priorityClassName"] = spec.resources.priority_class_name
    return {
        "metadata": {
            # User labels first: they cannot replace the labels the operator selects pods by.
            "labels": {**((extra and extra.labels) or {}), **labels(job.metadata.name, attempt)},
            "annotations": {**((extra and extra.annotations) or {}), "kubectl.kubernetes.io/default-container": CONTAINER},
        },
        "spec": pod_spec,
    }


def build_job(job: FineTuneJob, attempt: int, settings: Settings, *, suspend: bool = False,
              active_deadline_seconds: int | None = None) -> dict[str, Any]:
    nodes = job.spec.resources.nodes
    queue = {LABEL_QUEUE: job.spec.queue_name} if job.spec.queue_name else {}
    spec: dict[str, Any] = {
        # Attempts are the operator's: a failed pod fails this Job, and the next attempt is a new Job.
        "backoffLimit": 0,
        "completions": nodes,
        "parallelism": nodes,
        "suspend": suspend,
        # A permanent trainer failure in any rank ends the attempt at once, and the Job's Failed condition says
        # so (reason PodFailurePolicy) even after its pods are gone.
        "podFailurePolicy": {"rules": [{
            "action": "FailJob",
            "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_PERMANENT]},
        }]},
        "template": _pod_template(job, attempt, settings),
    }
    if nodes > 1:
        spec["completionMode"] = "Indexed"
    if active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = active_deadline_seconds
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _metadata(job, attempt, queue), "spec": spec}


def build_attempt(job: FineTuneJob, attempt: int, settings: Settings, *, suspend: bool = False,
                  active_deadline_seconds: int | None = None) -> list[dict[str, Any]]:
    """Every object of one attempt, in creation order: what the pods mount and resolve exists before they start."""
    objects = [build_config_map(job, attempt, settings)]
    if job.spec.resources.nodes > 1:
        objects.append(build_service(job, attempt, settings))
    objects.append(build_job(job, attempt, settings, suspend=suspend, active_deadline_seconds=active_deadline_seconds))
    return objects
