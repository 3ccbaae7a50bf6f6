"""How the operator names and labels what it creates, and so how it finds it again.

render.py stamps these names and labels on an attempt's objects; observed.py, children.py and kube.py read them
back (which FineTuneJob and attempt a Job or pod belongs to, which pod is rank 0, which container is the trainer).
They live here, apart from the builders, because every side depends on them and none of the readers renders.

Every child of attempt N of a FineTuneJob is named ``<finetunejob>-a<N>``: deterministic, so a retried pass finds
what an earlier one created instead of creating it twice.
"""

from __future__ import annotations

from finetune_trainer.locations import CACHE_DIR_ENV, PVC_ROOT_ENV
from finetune_trainer.output_spec import JOB_UID_ENV, REGISTRY_AUTH_ENV

# The FineTuneJob a child belongs to (its name) and the attempt it is part of; the label keys predate this module.
LABEL_FINETUNEJOB = "finetune.io/job"
LABEL_ATTEMPT = "finetune.io/attempt"
MANAGED_BY = "finetune-operator"
# Every trainer Job and pod this operator made, and nothing else: what the watches and full syncs ask the API server
# for, so that other workloads' Jobs and pods never reach the operator.
CHILD_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY},{LABEL_FINETUNEJOB}"
CONTAINER = "trainer"
# The rank of a pod of an Indexed Job (multi-node); rank 0 reports for the attempt.
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
JOB_COMPLETION_INDEX = "JOB_COMPLETION_INDEX"

# What render.py puts in every trainer pod. spec.pod may not reuse these names or paths (pod_overrides.py refuses
# them), so a user's volume, mount or variable can never replace or hide one of the operator's.
CONFIG_DIR = "/etc/finetune"  # the trainer's config (from the pod's CONFIG_ANNOTATION, through the downward API)
# The trainer's config as YAML on the trainer pods (render.py), which the pod reads as a file (CONFIG_DIR).
CONFIG_ANNOTATION = "finetune.io/trainer-config"
SCRATCH_OUTPUT = "/var/lib/finetune/output"  # the output of a job without spec.output.location
DEFAULT_PVC_ROOT = "/mnt/pvc"  # pvc://claim/path is mounted at <root>/<claim> (settings.pvc_mount_root)
TMP_DIR = "/tmp"  # the writable home, caches and temp files (the root filesystem is read-only)
SHM_DIR = "/dev/shm"
# output.push.secretRef's dockerconfigjson, read by the trainer only (push.py), never put in the environment.
REGISTRY_AUTH_DIR = "/var/run/secrets/finetune.io/registry"
CACHE_DIR = "/var/cache/finetune"  # where the cache claim (settings.cache_claim) is mounted
VOLUME_CONFIG, VOLUME_TMP, VOLUME_SHM, VOLUME_OUTPUT = "config", "tmp", "dshm", "output"
VOLUME_REGISTRY_AUTH, VOLUME_CACHE = "registry-auth", "download-cache"
CLAIM_VOLUME_PREFIX = "pvc-"  # pvc-0, pvc-1, ...: one volume per claim the job reads or writes
OPERATOR_ENV = ("FINETUNE_JOB_NAME", "FINETUNE_ATTEMPT", PVC_ROOT_ENV, "PYTHONUNBUFFERED", "HOME", "HF_HOME",
                JOB_COMPLETION_INDEX, JOB_UID_ENV, REGISTRY_AUTH_ENV, CACHE_DIR_ENV)


def attempt_name(finetunejob: str, attempt: int) -> str:
    return f"{finetunejob}-a{attempt}"


def selector_labels(finetunejob: str, attempt: int) -> dict[str, str]:
    return {LABEL_FINETUNEJOB: finetunejob, LABEL_ATTEMPT: str(attempt)}


def child_labels(finetunejob: str, attempt: int) -> dict[str, str]:
    """The labels of every object of an attempt, pods included."""
    return {
        "app.kubernetes.io/name": "finetune-trainer",
        "app.kubernetes.io/instance": finetunejob,
        "app.kubernetes.io/component": "trainer",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        **selector_labels(finetunejob, attempt),
    }
