"""spec.pod: what a user may add to the trainer pods, and the rules that keep those additions safe.

Users need a few pod settings the operator cannot guess (Kubeflow Trainer's users call service account and env the
minimal set): variables such as NCCL_*, a ServiceAccount for cloud workload identity, extra volumes (a shared
cache, a CA bundle), affinity, tolerations and image pull secrets. This is deliberately not a whole pod template:
every field here can be added to what render.py builds without weakening it. Two kinds of rule are enforced, each
by the CRD (CEL or schema) at `kubectl apply` and by pydantic in `finetune run`/`plan`, with the same message:

- Pod Security "restricted" still admits the pod: volumes are only of the types that profile allows (no hostPath,
  no privileged or host-namespace settings exist here at all).
- Nothing collides with the operator's own volumes, mount paths or variables (names.py), which would replace the
  trainer's config, hide a claim or change where caches go.

``affinity`` and the CSI, ephemeral, projected and downward API volume sources are core/v1 objects passed through
as written (not re-modelled here); the API server checks them when it creates the attempt's Job, and a refusal
fails the FineTuneJob with its words (reconciler.py).
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from finetune_operator.core_types import (ClaimVolume, ConfigMapVolume, EmptyDirVolume, FieldRef, KeyRef,
                                          LocalObjectReference, ResourceFieldRef, SecretVolume, Toleration)
from finetune_operator.names import (CACHE_DIR, CLAIM_VOLUME_PREFIX, CONFIG_DIR, DEFAULT_PVC_ROOT, OPERATOR_ENV,
                                     REGISTRY_AUTH_DIR, SCRATCH_OUTPUT, SHM_DIR, TMP_DIR, VOLUME_CONFIG,
                                     VOLUME_CACHE, VOLUME_OUTPUT, VOLUME_REGISTRY_AUTH, VOLUME_SHM, VOLUME_TMP)
from finetune_trainer.spec_base import DNS1123_SUBDOMAIN, ApiModel, Rule, enforce, rules_schema

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# Absolute, no trailing slash, no "." or ".." segment (so a path cannot climb into a reserved one).
MOUNT_PATH_PATTERN = r"^(/\.?[A-Za-z0-9_-][A-Za-z0-9._-]*)+$"
RESERVED_VOLUMES = (VOLUME_CONFIG, VOLUME_TMP, VOLUME_SHM, VOLUME_OUTPUT, VOLUME_REGISTRY_AUTH, VOLUME_CACHE)
# The operator's mount points: a user mount may not be one of them or a parent of one; inside one only under /tmp
# (e.g. a cache claim at /tmp/huggingface), since the others hold the config, claims and output.
RESERVED_PATHS = (CONFIG_DIR, TMP_DIR, SHM_DIR, DEFAULT_PVC_ROOT, SCRATCH_OUTPUT, REGISTRY_AUTH_DIR, CACHE_DIR)
# The volume types Pod Security "restricted" admits (hostPath, nfs, iscsi, ... are not).
RESTRICTED_VOLUME_TYPES = ("configMap", "secret", "emptyDir", "persistentVolumeClaim", "csi", "ephemeral",
                           "projected", "downwardAPI")


def _list(items: Any) -> str:
    return "[" + ", ".join(f"'{item}'" for item in items) + "]"


def _collides(path: str) -> bool:
    return any(reserved == path or reserved.startswith(path + "/")
               or (reserved != TMP_DIR and path.startswith(reserved + "/")) for reserved in RESERVED_PATHS)


ENV_RULES = [Rule(
    cel=f"!(self.name in {_list(OPERATOR_ENV)})",
    message=f"spec.pod.env: the operator sets {', '.join(OPERATOR_ENV)}; choose another name",
    check=lambda e: e.name not in OPERATOR_ENV, field="name",
), Rule(
    cel="!(has(self.value) && has(self.valueFrom))",
    message="spec.pod.env: value and valueFrom are exclusive",
    check=lambda e: e.value is None or e.value_from is None, field="valueFrom",
)]
ENV_SOURCE_RULES = [Rule(
    cel="[has(self.secretKeyRef), has(self.configMapKeyRef), has(self.fieldRef), has(self.resourceFieldRef)]"
        ".filter(x, x).size() == 1",
    message="spec.pod.env[].valueFrom: set exactly one of secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef",
    check=lambda s: sum(x is not None for x in (s.secret_key_ref, s.config_map_key_ref, s.field_ref,
                                                s.resource_field_ref)) == 1,
    field="valueFrom",
)]
VOLUME_RULES = [Rule(
    cel=f"!(self.name in {_list(RESERVED_VOLUMES)}) && !self.name.startsWith('{CLAIM_VOLUME_PREFIX}')",
    message=f"spec.pod.volumes: the names {', '.join(RESERVED_VOLUMES)} and {CLAIM_VOLUME_PREFIX}* are the "
            "operator's; choose another name",
    check=lambda v: v.name not in RESERVED_VOLUMES and not v.name.startswith(CLAIM_VOLUME_PREFIX), field="name",
), Rule(
    cel="[" + ", ".join(f"has(self.{t})" for t in RESTRICTED_VOLUME_TYPES) + "].filter(x, x).size() == 1",
    message=f"spec.pod.volumes: set exactly one source: {', '.join(RESTRICTED_VOLUME_TYPES)}",
    check=lambda v: len(set(RESTRICTED_VOLUME_TYPES) & set(v.wire())) == 1, field="name",
)]
MOUNT_RULES = [Rule(
    cel=f"!{_list(RESERVED_PATHS)}.exists(r, r == self.mountPath || r.startsWith(self.mountPath + '/') || "
        f"(r != '{TMP_DIR}' && self.mountPath.startsWith(r + '/')))",
    message=f"spec.pod.volumeMounts: mountPath may not be, contain or (but under {TMP_DIR}) lie inside the "
            f"operator's mounts {', '.join(RESERVED_PATHS)}",
    check=lambda m: not _collides(m.mount_path), field="mountPath",
)]
POD_RULES = [Rule(
    cel="!has(self.volumeMounts) || self.volumeMounts.all(m, has(self.volumes) && "
        "self.volumes.exists(v, v.name == m.name))",
    message="spec.pod.volumeMounts: each name must be a volume of spec.pod.volumes",
    check=lambda p: {m.name for m in p.volume_mounts or ()} <= {v.name for v in p.volumes or ()},
    field="volumeMounts",
)]


def _by_name(description: str, max_items: int, key: str = "name") -> Any:
    """A list of objects keyed by ``key``, as core/v1 lists are: the API server refuses a duplicate key."""
    return Field(None, max_length=max_items, description=description, json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": [key]})


def _unique(items: list[Any] | None, key: str) -> list[Any] | None:
    seen = [getattr(item, key) for item in items or ()]
    duplicates = sorted({value for value in seen if seen.count(value) > 1})
    if duplicates:
        raise ValueError(f"duplicate {key}: {', '.join(duplicates)}")
    return items


# ---------------------------------------------------------------------------------------------- env

class EnvVarSource(ApiModel):
    model_config = ConfigDict(json_schema_extra=rules_schema(ENV_SOURCE_RULES))

    secret_key_ref: KeyRef | None = Field(None, description="A key of a Secret.")
    config_map_key_ref: KeyRef | None = Field(None, description="A key of a ConfigMap.")
    field_ref: FieldRef | None = Field(None, description="A field of the pod (downward API).")
    resource_field_ref: ResourceFieldRef | None = Field(None, description="A resource request or limit.")

    @model_validator(mode="after")
    def _one_source(self) -> EnvVarSource:
        enforce(self, ENV_SOURCE_RULES)
        return self


class EnvVar(ApiModel):
    model_config = ConfigDict(json_schema_extra=rules_schema(ENV_RULES))

    name: str = Field(min_length=1, max_length=253, pattern=ENV_NAME_PATTERN,
                      description=f"Variable name; not one the operator sets ({', '.join(OPERATOR_ENV)}).")
    value: str | None = Field(None, max_length=32768, description="Value; $(VAR) expands earlier variables.")
    value_from: EnvVarSource | None = Field(None, description="Take the value from a Secret, ConfigMap or the pod.")

    @model_validator(mode="after")
    def _rules(self) -> EnvVar:
        enforce(self, ENV_RULES)
        return self


# ---------------------------------------------------------------------------------------------- volumes

def _passed_through(kind: str) -> Any:
    return Field(None, description=f"A core/v1 {kind} volume source, passed through as written.",
                 json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})


class Volume(ApiModel):
    """A pod volume of a type Pod Security "restricted" admits."""

    model_config = ConfigDict(json_schema_extra=rules_schema(VOLUME_RULES))

    name: str = Field(min_length=1, max_length=63, pattern=DNS1123_LABEL,
                      description=f"Volume name; not one of the operator's ({', '.join(RESERVED_VOLUMES)}, "
                                  f"{CLAIM_VOLUME_PREFIX}*).")
    config_map: ConfigMapVolume | None = Field(None, description="Files from a ConfigMap.")
    secret: SecretVolume | None = Field(None, description="Files from a Secret.")
    empty_dir: EmptyDirVolume | None = Field(None, description="Scratch space that lives as long as the pod.")
    persistent_volume_claim: ClaimVolume | None = Field(
        None, description="A PersistentVolumeClaim (for models, data and output prefer pvc:// locations).")
    csi: dict[str, Any] | None = _passed_through("CSIVolumeSource")
    ephemeral: dict[str, Any] | None = _passed_through("EphemeralVolumeSource")
    projected: dict[str, Any] | None = _passed_through("ProjectedVolumeSource")
    downward_api: dict[str, Any] | None = Field(
        None, alias="downwardAPI", description="A core/v1 DownwardAPIVolumeSource, passed through as written.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})

    @model_validator(mode="before")
    @classmethod
    def _restricted_types_only(cls, data: Any) -> Any:
        """Name the rule rather than saying "unknown field" when a volume type the profile refuses is asked for."""
        if isinstance(data, dict):
            refused = sorted(set(data) - {"name", *RESTRICTED_VOLUME_TYPES} - set(cls.model_fields))
            if refused:
                raise ValueError(f"volume type {', '.join(refused)} is not allowed (Pod Security \"restricted\"); "
                                 f"allowed: {', '.join(RESTRICTED_VOLUME_TYPES)}")
        return data

    @model_validator(mode="after")
    def _rules(self) -> Volume:
        enforce(self, VOLUME_RULES)
        return self


class VolumeMount(ApiModel):
    model_config = ConfigDict(json_schema_extra=rules_schema(MOUNT_RULES))

    name: str = Field(min_length=1, max_length=63, pattern=DNS1123_LABEL, description="A volume of spec.pod.volumes.")
    mount_path: str = Field(min_length=2, max_length=1024, pattern=MOUNT_PATH_PATTERN,
                            description=f"Absolute path in the trainer container; not one of the operator's "
                                        f"mounts ({', '.join(RESERVED_PATHS)}), nor above or (but under "
                                        f"{TMP_DIR}) inside one.")
    sub_path: str | None = Field(None, max_length=1024, pattern=r"^[^/]",
                                 description="Path inside the volume to mount instead of its root.")
    read_only: bool | None = Field(None, description="Mount read-only.")

    @model_validator(mode="after")
    def _rules(self) -> VolumeMount:
        enforce(self, MOUNT_RULES)
        return self

    @field_validator("sub_path")
    @classmethod
    def _inside(cls, v: str | None) -> str | None:
        if v is not None and ".." in v.split("/"):
            raise ValueError("subPath may not contain '..'")
        return v


# ---------------------------------------------------------------------------------------------- spec.pod

class PodOverrides(ApiModel):
    """What spec.pod adds to every trainer pod of every attempt."""

    model_config = ConfigDict(json_schema_extra=rules_schema(POD_RULES))

    env: list[EnvVar] | None = _by_name("Variables of the trainer container (e.g. NCCL_DEBUG), after the "
                                        "operator's own.", 64)
    service_account_name: str | None = Field(
        None, max_length=253, pattern=f"^{DNS1123_SUBDOMAIN}$",
        description="ServiceAccount of the trainer pods, e.g. one bound to a cloud identity for bucket access "
                    "(default: the namespace's default). Its API token is still not mounted.")
    volumes: list[Volume] | None = _by_name("Extra volumes; only the types Pod Security \"restricted\" admits.", 32)
    volume_mounts: list[VolumeMount] | None = _by_name("Where the trainer container mounts spec.pod.volumes.", 32,
                                                       key="mountPath")
    affinity: dict[str, Any] | None = Field(
        None, description="A core/v1 Affinity (node, pod and anti-affinity) for the trainer pods, passed through "
                          "as written.", json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    tolerations: list[Toleration] | None = Field(None, max_length=64, description="Tolerations of the trainer pods.")
    image_pull_secrets: list[LocalObjectReference] | None = _by_name(
        "Secrets to pull the trainer image with (a private registry).", 16)

    @field_validator("env", "volumes", "image_pull_secrets")
    @classmethod
    def _unique_names(cls, v: list[Any] | None) -> list[Any] | None:
        return _unique(v, "name")

    @field_validator("volume_mounts")
    @classmethod
    def _unique_paths(cls, v: list[VolumeMount] | None) -> list[VolumeMount] | None:
        return _unique(v, "mount_path")

    @model_validator(mode="after")
    def _rules(self) -> PodOverrides:
        enforce(self, POD_RULES)
        return self
