"""The core/v1 shapes spec.pod reuses (pod_overrides.py), as pydantic models with every field described.

Only the parts of core/v1 a trainer pod may take from a user: the sources of an env value, the volume sources Pod
Security "restricted" admits that are worth checking here, tolerations and pull secrets. Field names and meanings
are core/v1's, so a manifest reads like any pod's.
"""

from __future__ import annotations

import enum

from pydantic import Field

from finetune_trainer.spec_base import DNS1123_SUBDOMAIN, ApiModel


# ---------------------------------------------------------------------------------------------- env values

class KeyRef(ApiModel):
    name: str = Field(min_length=1, max_length=253, pattern=f"^{DNS1123_SUBDOMAIN}$",
                      description="Name of the Secret or ConfigMap in the FineTuneJob's namespace.")
    key: str = Field(min_length=1, max_length=253, description="Key whose value becomes the variable.")
    optional: bool | None = Field(None, description="Start the pod even if the key or object is missing.")


class FieldRef(ApiModel):
    field_path: str = Field(min_length=1, max_length=256,
                            description="Pod field, e.g. metadata.name, status.podIP, spec.nodeName.")
    api_version: str | None = Field(None, description="API version of the field path (default v1).")


class ResourceFieldRef(ApiModel):
    resource: str = Field(min_length=1, max_length=253, description="limits.cpu, limits.memory, requests.cpu, ...")
    container_name: str | None = Field(None, description="Container whose resources are read (default: trainer).")
    divisor: str | None = Field(None, max_length=64, description='Unit of the value, e.g. "1Mi".',
                                json_schema_extra={"x-kubernetes-int-or-string": True})


# ---------------------------------------------------------------------------------------------- volume sources

class KeyToPath(ApiModel):
    key: str = Field(min_length=1, max_length=253, description="Key of the ConfigMap or Secret.")
    path: str = Field(min_length=1, max_length=253, pattern=r"^[^/]", description="Relative file path to write it to.")
    mode: int | None = Field(None, ge=0, le=0o777, description="File mode bits (decimal, e.g. 288 for 0440).")


class ConfigMapVolume(ApiModel):
    name: str = Field(min_length=1, max_length=253, pattern=f"^{DNS1123_SUBDOMAIN}$", description="ConfigMap name.")
    items: list[KeyToPath] | None = Field(None, max_length=64, description="Keys to project (default: all).")
    default_mode: int | None = Field(None, ge=0, le=0o777, description="File mode bits of the files (decimal).")
    optional: bool | None = Field(None, description="Start the pod even if the ConfigMap is missing.")


class SecretVolume(ApiModel):
    secret_name: str = Field(min_length=1, max_length=253, pattern=f"^{DNS1123_SUBDOMAIN}$",
                             description="Secret name.")
    items: list[KeyToPath] | None = Field(None, max_length=64, description="Keys to project (default: all).")
    default_mode: int | None = Field(None, ge=0, le=0o777, description="File mode bits of the files (decimal).")
    optional: bool | None = Field(None, description="Start the pod even if the Secret is missing.")


class EmptyDirMedium(str, enum.Enum):
    DISK = ""
    MEMORY = "Memory"


class EmptyDirVolume(ApiModel):
    medium: EmptyDirMedium | None = Field(None, description='"" (node disk) or "Memory" (tmpfs, counts as memory).')
    size_limit: str | None = Field(None, max_length=64, description='Most it may hold, e.g. "10Gi".',
                                   json_schema_extra={"x-kubernetes-int-or-string": True})


class ClaimVolume(ApiModel):
    claim_name: str = Field(min_length=1, max_length=253, pattern=f"^{DNS1123_SUBDOMAIN}$",
                            description="PersistentVolumeClaim in the FineTuneJob's namespace.")
    read_only: bool | None = Field(None, description="Mount the claim read-only.")


# ---------------------------------------------------------------------------------------------- scheduling

class TolerationOperator(str, enum.Enum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(str, enum.Enum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(ApiModel):
    key: str | None = Field(None, max_length=316, description="Taint key to tolerate; unset with Exists: every taint.")
    operator: TolerationOperator | None = Field(None, description="Equal (the default) or Exists.")
    value: str | None = Field(None, max_length=63, description="Taint value, for Equal.")
    effect: TaintEffect | None = Field(None, description="Taint effect to tolerate; unset: every effect.")
    toleration_seconds: int | None = Field(None, description="With NoExecute: how long the pod stays after the taint.")


class LocalObjectReference(ApiModel):
    name: str = Field(min_length=1, max_length=253, pattern=f"^{DNS1123_SUBDOMAIN}$",
                      description="Name of a docker-registry Secret in the FineTuneJob's namespace.")
