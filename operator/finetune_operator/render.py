"""Pure builders of the objects one attempt of a FineTuneJob runs as: a batch/v1 Job of trainer pods and, for
multi-node FineTuneJobs, the headless Service their rendezvous goes through.

The trainer's config travels in the Job itself, as an annotation of its pod template that the pod mounts as a file
through the downward API (names.CONFIG_ANNOTATION, CONFIG_PATH), not in a ConfigMap of its own: one object and one
API request less per attempt (BENCHMARKS.md §5), and no window in which a pod waits for its ConfigMap. The size
limit is the API server's for all of a pod's annotations together, 256 KiB; a config is a few KiB.

Every child of attempt N is named and labelled as names.py says (deterministic, so a retried reconcile finds what an
earlier one created instead of creating it twice) and carries an owner reference to the FineTuneJob (so deleting it
deletes them). Nothing here talks to the API; kube.py creates what these functions return.
"""

from __future__ import annotations

from typing import Any

import yaml

from finetune_operator.api import API_VERSION, KIND, FineTuneJob, FineTuneJobSpec
from finetune_operator.kueue import LABEL_QUEUE
from finetune_operator.names import (CACHE_DIR, CLAIM_VOLUME_PREFIX, COMPLETION_INDEX_ANNOTATION, CONFIG_ANNOTATION,
                                     CONFIG_DIR, CONTAINER, JOB_COMPLETION_INDEX, REGISTRY_AUTH_DIR, SCRATCH_OUTPUT, SHM_DIR,
                                     TMP_DIR, VOLUME_CACHE, VOLUME_CONFIG, VOLUME_OUTPUT, VOLUME_REGISTRY_AUTH,
                                     VOLUME_SHM, VOLUME_TMP, attempt_name, child_labels, selector_labels)
from finetune_operator.places import InPod, trainer_config
from finetune_operator.settings import Settings
from finetune_trainer.config import EXIT_PERMANENT
from finetune_trainer.locations import CACHE_DIR_ENV, PVC_ROOT_ENV, claim_of
from finetune_trainer.output_spec import JOB_UID_ENV, REGISTRY_AUTH_ENV, REGISTRY_SECRET_KEY as SECRET_KEY, S3Spec

CONFIG_FILE = "config.yaml"
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_FILE}"


def owner_reference(ftj: FineTuneJob) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": ftj.metadata.name,
        "uid": ftj.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(ftj: FineTuneJob, attempt: int, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": attempt_name(ftj.metadata.name, attempt),
        "namespace": ftj.metadata.namespace,
        "labels": {**child_labels(ftj.metadata.name, attempt), **(extra_labels or {})},
        "ownerReferences": [owner_reference(ftj)],
    }


# ---------------------------------------------------------------------------------------------- storage

def _claims(ftj: FineTuneJob) -> dict[str, bool]:
    """Each claim the FineTuneJob reads or writes -> whether it is mounted read-only (only inputs live on it)."""
    spec = ftj.spec
    claims: dict[str, bool] = {}
    for location in (spec.model.source, spec.dataset.source):
        claim = claim_of(location)
        if claim:
            claims.setdefault(claim, True)
    output = claim_of(spec.output.location)
    if output:
        claims[output] = False
    return dict(sorted(claims.items()))


def _volumes(ftj: FineTuneJob, attempt: int, settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {"name": VOLUME_CONFIG, "downwardAPI": {"items": [
            {"path": CONFIG_FILE, "fieldRef": {"fieldPath": f"metadata.annotations['{CONFIG_ANNOTATION}']"}}]}},
        # The root filesystem is read-only: /tmp takes the caches (HF_HOME), torchrun's files and temp files.
        {"name": VOLUME_TMP, "emptyDir": {}},
        # The container runtime's 64Mi /dev/shm is too small for DataLoader workers and NCCL.
        {"name": VOLUME_SHM, "emptyDir": {"medium": "Memory"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": VOLUME_CONFIG, "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": VOLUME_TMP, "mountPath": TMP_DIR},
        {"name": VOLUME_SHM, "mountPath": SHM_DIR},
    ]
    for index, (claim, read_only) in enumerate(_claims(ftj).items()):
        name, ro = f"{CLAIM_VOLUME_PREFIX}{index}", {"readOnly": True} if read_only else {}
        volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim, **ro}})
        mounts.append({"name": name, "mountPath": f"{settings.pvc_mount_root}/{claim}", **ro})
    if not ftj.spec.output.location:
        volumes.append({"name": VOLUME_OUTPUT, "emptyDir": {}})
        mounts.append({"name": VOLUME_OUTPUT, "mountPath": SCRATCH_OUTPUT})
    push = ftj.spec.output.push
    if push and push.secret_ref:
        # Optional: a missing Secret or key then fails the trainer's pre-flight with a message naming them,
        # instead of a pod that waits for its volume forever.
        volumes.append({"name": VOLUME_REGISTRY_AUTH, "secret": {
            "secretName": push.secret_ref.name, "optional": True,
            "items": [{"key": SECRET_KEY, "path": SECRET_KEY}]}})
        mounts.append({"name": VOLUME_REGISTRY_AUTH, "mountPath": REGISTRY_AUTH_DIR, "readOnly": True})
    if settings.cache_claim:  # shared by attempts and jobs: a retry finds the model it downloaded before
        volumes.append({"name": VOLUME_CACHE, "persistentVolumeClaim": {"claimName": settings.cache_claim}})
        mounts.append({"name": VOLUME_CACHE, "mountPath": CACHE_DIR})
    pod = ftj.spec.pod
    if pod:  # after the operator's own, whose names and paths pod_overrides.py keeps them from reusing
        volumes += [volume.wire() for volume in pod.volumes or ()]
        mounts += [mount.wire() for mount in pod.volume_mounts or ()]
    return volumes, mounts


# ---------------------------------------------------------------------------------------------- config

def build_config(ftj: FineTuneJob, settings: Settings) -> str:
    """The trainer's config (YAML) as the pod reads it (places.InPod): ``pvc://`` locations as the user wrote them,
    which the trainer finds under $FINETUNE_PVC_ROOT, where _volumes mounts each claim."""
    config = trainer_config(ftj, InPod(metrics_port=settings.trainer_metrics_port, s3_defaults=_s3_defaults(settings)))
    # libyaml's emitter where PyYAML has it: the pure-Python one was 80 % of a creating pass's CPU.
    return yaml.dump(config.wire(), Dumper=_DUMPER, sort_keys=False, width=120)


# ---------------------------------------------------------------------------------------------- service

def build_service(ftj: FineTuneJob, attempt: int, settings: Settings) -> dict[str, Any]:
    """Headless Service that gives each rank a DNS name (<finetunejob>-a<N>-<index>.<finetunejob>-a<N>) for the
    rendezvous."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(ftj, attempt),
        "spec": {
            "clusterIP": "None",
            # Ranks resolve rank 0 while it starts, before any pod is Ready.
            "publishNotReadyAddresses": True,
            "selector": selector_labels(ftj.metadata.name, attempt),
            "ports": [{"name": "rendezvous", "port": settings.rendezvous_port, "targetPort": "rendezvous"}],
        },
    }


# ---------------------------------------------------------------------------------------------- job

def trainer_command(ftj: FineTuneJob, attempt: int, settings: Settings) -> list[str]:
    trainer = ["-m", "finetune_trainer", "--config", CONFIG_PATH]
    resources = ftj.spec.resources
    if resources.nodes > 1:
        name = attempt_name(ftj.metadata.name, attempt)
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


def _resources(ftj: FineTuneJob, settings: Settings) -> dict[str, Any]:
    spec = ftj.spec.resources
    amounts: dict[str, str] = {}
    if spec.cpu:
        amounts["cpu"] = spec.cpu
    if spec.memory:
        amounts["memory"] = spec.memory
    if spec.gpus:
        amounts[spec.gpu_resource or settings.gpu_resource] = str(spec.gpus)
    # Requests equal limits: the trainer sizes its threads from the CPU quota, and a GPU job is not overcommitted.
    return {"requests": amounts, "limits": dict(amounts)} if amounts else {}


def _env(ftj: FineTuneJob, attempt: int, settings: Settings) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "FINETUNE_JOB_NAME", "value": ftj.metadata.name},
        {"name": "FINETUNE_ATTEMPT", "value": str(attempt)},
        {"name": PVC_ROOT_ENV, "value": settings.pvc_mount_root},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HOME", "value": "/tmp"},
        # Without a cache claim the downloads go to /tmp (~/.cache/finetune), which lives as long as the pod.
        {"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface" if settings.cache_claim else "/tmp/huggingface"},
    ]
    uid = getattr(ftj.metadata, "uid", None)
    if uid:  # the artifact's lineage names the FineTuneJob (push.py)
        env.append({"name": JOB_UID_ENV, "value": uid})
    push = ftj.spec.output.push
    if push and push.secret_ref:
        env.append({"name": REGISTRY_AUTH_ENV, "value": f"{REGISTRY_AUTH_DIR}/{SECRET_KEY}"})
    if settings.cache_claim:
        env.append({"name": CACHE_DIR_ENV, "value": CACHE_DIR})
    env += _s3_credentials(ftj)
    if ftj.spec.resources.nodes > 1:
        # Declared (the Job controller would inject it too) so that the command's $(JOB_COMPLETION_INDEX) expands.
        env.append({"name": JOB_COMPLETION_INDEX, "valueFrom": {"fieldRef": {
            "fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}}})
    # The user's last, so theirs may refer to the operator's as $(VAR); their names never repeat these.
    return env + [var.wire() for var in (ftj.spec.pod and ftj.spec.pod.env) or ()]


def _s3_credentials(ftj: FineTuneJob) -> list[dict[str, Any]]:
    """The standard AWS variables from the job's Secret, key by key: the values never enter the config or status."""
    storage = ftj.spec.storage
    ref = storage.s3.secret_ref if storage and storage.s3 else None
    if ref is None:
        return []
    return [{"name": variable, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": key}}}
            for variable, key in (("AWS_ACCESS_KEY_ID", ref.access_key_id_key),
                                  ("AWS_SECRET_ACCESS_KEY", ref.secret_access_key_key))]


def _s3_defaults(settings: Settings) -> S3Spec:
    return S3Spec.model_validate({"endpoint": settings.s3_endpoint or None, "region": settings.s3_region or None,
                                  "addressingStyle": settings.s3_addressing_style or None})


def _secret_refs(ftj: FineTuneJob) -> list[dict[str, Any]]:
    mlflow = ftj.spec.tracking.mlflow if ftj.spec.tracking else None
    refs = (ftj.spec.model.secret_ref, ftj.spec.dataset.secret_ref, mlflow.secret_ref if mlflow else None)
    names = [ref.name for ref in refs if ref]
    return [{"secretRef": {"name": name}} for name in dict.fromkeys(names)]


def _container(ftj: FineTuneJob, attempt: int, settings: Settings, mounts: list[dict[str, Any]]) -> dict[str, Any]:
    ports = [{"name": "metrics", "containerPort": settings.trainer_metrics_port}]
    if ftj.spec.resources.nodes > 1:
        ports.append({"name": "rendezvous", "containerPort": settings.rendezvous_port})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": ftj.spec.image or settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": trainer_command(ftj, attempt, settings),
        "env": _env(ftj, attempt, settings),
        "envFrom": _secret_refs(ftj),
        "ports": ports,
        "resources": _resources(ftj, settings),
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


def _add_pod_overrides(pod_spec: dict[str, Any], spec: FineTuneJobSpec) -> None:
    """spec.pod's scheduling and identity settings (its env and volumes join the operator's in their builders)."""
    pod = spec.pod
    # resources.tolerations is the deprecated place of pod.tolerations; a job may still use it, or both.
    tolerations = [*(spec.resources.tolerations or ()), *((pod and pod.tolerations) or ())]
    if tolerations:
        pod_spec["tolerations"] = [t.wire() for t in tolerations]
    if not pod:
        return
    if pod.affinity:
        pod_spec["affinity"] = pod.affinity
    if pod.service_account_name:
        pod_spec["serviceAccountName"] = pod.service_account_name
    if pod.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [secret.wire() for secret in pod.image_pull_secrets]


def _pod_template(ftj: FineTuneJob, attempt: int, settings: Settings) -> dict[str, Any]:
    spec, name = ftj.spec, attempt_name(ftj.metadata.name, attempt)
    volumes, mounts = _volumes(ftj, attempt, settings)
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
        "containers": [_container(ftj, attempt, settings, mounts)],
        "volumes": volumes,
    }
    if spec.resources.nodes > 1:
        pod_spec["subdomain"] = name  # pod hostnames <name>-<index> resolve through the headless Service
    if spec.resources.node_selector:
        pod_spec["nodeSelector"] = dict(spec.resources.node_selector)
    _add_pod_overrides(pod_spec, spec)
    if spec.resources.priority_class_name:
        pod_spec["priorityClassName"] = spec.resources.priority_class_name
    return {
        "metadata": {
            # User labels first: they cannot replace the labels the operator selects pods by.
            "labels": {**((extra and extra.labels) or {}), **child_labels(ftj.metadata.name, attempt)},
            "annotations": {**((extra and extra.annotations) or {}), "kubectl.kubernetes.io/default-container": CONTAINER,
                            CONFIG_ANNOTATION: build_config(ftj, settings)},
        },
        "spec": pod_spec,
    }


def build_job(ftj: FineTuneJob, attempt: int, settings: Settings, *, suspend: bool = False,
              active_deadline_seconds: int | None = None) -> dict[str, Any]:
    nodes = ftj.spec.resources.nodes
    queue = {LABEL_QUEUE: ftj.spec.queue_name} if ftj.spec.queue_name else {}
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
        "template": _pod_template(ftj, attempt, settings),
    }
    if nodes > 1:
        spec["completionMode"] = "Indexed"
    if active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = active_deadline_seconds
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _metadata(ftj, attempt, queue), "spec": spec}


def build_attempt(ftj: FineTuneJob, attempt: int, settings: Settings, *, suspend: bool = False,
                  active_deadline_seconds: int | None = None) -> list[dict[str, Any]]:
    """Every object of one attempt, in creation order: what the pods mount and resolve exists before they start."""
    objects = [build_service(ftj, attempt, settings)] if ftj.spec.resources.nodes > 1 else []
    objects.append(build_job(ftj, attempt, settings, suspend=suspend, active_deadline_seconds=active_deadline_seconds))
    return objects
