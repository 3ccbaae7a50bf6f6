"""The FineTuneJob API (finetune.io/v1alpha1): spec and status as pydantic models.

These models are the single source of truth: the CRD in crds/ is generated from them (see crd.py), the operator
and `finetune run` validate manifests with them, and the trainer's part of the spec is the trainer's own config
model, so the two cannot drift.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from pydantic import ConfigDict, Field, field_validator

from finetune_trainer.config import (
    ApiModel,
    DatasetSpec,
    ModelSpec,
    OutputSpec,
    StrategySpec,
    Task,
    TrackingSpec,
    TrainingSpec,
)

GROUP = "finetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ["ftj"]

# Children are named "<job>-a<attempt>" (and pods add 6 more characters), and a Service name is a DNS-1035 label
# of at most 63 characters, so a job name longer than this could not name its children.
MAX_NAME_LENGTH = 52

# Kubernetes' resource.Quantity grammar without the sign: a negative request is refused when the Job is created.
QUANTITY_PATTERN = r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"


class TolerationOperator(str, enum.Enum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(str, enum.Enum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(ApiModel):
    key: str | None = Field(None, max_length=316)
    operator: TolerationOperator | None = None
    value: str | None = Field(None, max_length=63)
    effect: TaintEffect | None = None
    toleration_seconds: int | None = None


def _quantity(description: str) -> Any:
    return Field(
        None, pattern=QUANTITY_PATTERN, max_length=64, description=description,
        json_schema_extra={"x-kubernetes-int-or-string": True},
    )


class ResourcesSpec(ApiModel):
    gpus: int = Field(0, ge=0, le=64, description="GPUs per node (0 trains on CPU).")
    nodes: int = Field(1, ge=1, le=256, description="Nodes; more than 1 runs an Indexed Job with torchrun rendezvous, "
                                                     "one rank per GPU (gloo, one rank per node, without GPUs).")
    cpu: str | None = _quantity('CPU request and limit per node, e.g. "8".')
    memory: str | None = _quantity('Memory request and limit per node, e.g. "32Gi".')
    gpu_resource: str | None = Field(
        None, min_length=1, max_length=253, pattern=r"^[a-z0-9.-]+/[a-z0-9._-]+$",
        description="Extended resource name of the GPU (default: the operator's setting, nvidia.com/gpu unless "
                    "the cluster admin changed it, e.g. amd.com/gpu).",
    )
    node_selector: dict[str, str] | None = Field(None, description="Node labels the trainer pods must match.")
    tolerations: list[Toleration] | None = Field(None, max_length=64, description="Tolerations for trainer pods.")
    priority_class_name: str | None = Field(None, max_length=253, description="PriorityClass of trainer pods.")

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _quantity_as_string(cls, v: Any) -> Any:
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


class RunPolicy(ApiModel):
    backoff_limit: int = Field(3, ge=0, le=100, description="Retryable failed attempts before the job fails.")
    active_deadline_seconds: int | None = Field(None, ge=1, description="Wall-clock limit of the whole job.")
    ttl_seconds_after_finished: int | None = Field(None, ge=0, description="Delete the job this long after it ends.")
    suspend: bool = Field(False, description="Pause the job (its pods are removed; it resumes from the checkpoint).")


class PodMetadata(ApiModel):
    labels: dict[str, str] | None = Field(None, description="Extra labels on trainer pods (e.g. cost allocation).")
    annotations: dict[str, str] | None = Field(None, description="Extra annotations on trainer pods.")


class NotifyFormat(str, enum.Enum):
    CLOUDEVENTS = "cloudevents"
    SLACK = "slack"


class NotifySink(ApiModel):
    url: str = Field(
        min_length=1, max_length=2048, pattern=r"^https?://[^\s/]+\S*$",
        description="HTTP(S) endpoint that receives a POST for every transition of the job (phase changes, retries, "
                    "and every other transition that posts a Kubernetes Event).",
    )
    format: NotifyFormat = Field(
        NotifyFormat.CLOUDEVENTS, description="cloudevents (a CloudEvent in structured mode, JSON) or slack "
                                              "(a Slack-compatible incoming-webhook message).",
    )


class NotifySpec(ApiModel):
    """Where the operator tells about this job, in addition to the sinks the cluster admin set in the chart."""

    sinks: list[NotifySink] = Field(min_length=1, max_length=8, description="Endpoints notified of transitions.")


class FineTuneJobSpec(ApiModel):
    model: ModelSpec = Field(json_schema_extra={
        "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "spec.model is immutable"}]})
    task: Task = Field(json_schema_extra={
        "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "spec.task is immutable"}]})
    dataset: DatasetSpec
    strategy: StrategySpec = Field(json_schema_extra={
        "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "spec.strategy is immutable"}]})
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    queue_name: str | None = Field(
        None, max_length=63, pattern=LABEL_VALUE_PATTERN, description="Kueue LocalQueue; copied to the kueue.x-k8s.io/queue-name label.",
    )
    image: str | None = Field(None, max_length=1024, description="Trainer image (default: the operator's setting).")
    pod_metadata: PodMetadata | None = Field(None, description="Labels and annotations added to trainer pods.")
    notify: NotifySpec | None = Field(None, description="Notification sinks of this job (docs/notifications.md).")
    tracking: TrackingSpec | None = Field(
        None, description="Experiment tracking (docs/tracking.md); unset: TensorBoard event files in the output.",
    )


class Phase(str, enum.Enum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class ConditionStatus(str, enum.Enum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    type: str = Field(max_length=316)
    status: ConditionStatus
    reason: str = Field(max_length=1024)
    message: str = Field("", max_length=32768)
    last_transition_time: str | None = Field(None, json_schema_extra={"format": "date-time"})
    observed_generation: int | None = Field(None, ge=0)


class Progress(ApiModel):
    step: int = Field(0, ge=0)
    total_steps: int | None = Field(None, ge=0)
    epoch: float | None = Field(None, ge=0)
    percent: float | None = Field(None, ge=0, le=100)
    eta_seconds: int | None = Field(None, ge=0)


class Parameters(ApiModel):
    trainable: int = Field(ge=0)
    total: int = Field(ge=0)


class CheckpointStatus(ApiModel):
    location: str
    step: int = Field(ge=0)


class OutputStatus(ApiModel):
    location: str


class TrackingStatus(ApiModel):
    """Where the run's tracking data is, as the trainer reported it."""

    mlflow_run_id: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                                      description="The MLflow run (every attempt of the job logs to the same run).")
    mlflow_experiment_id: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    tensorboard: str | None = Field(None, max_length=1024, description="Location of the TensorBoard event files.")


class FineTuneJobStatus(ApiModel):
    phase: Phase | None = None
    conditions: list[Condition] | None = Field(None, json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    attempts: int | None = Field(None, ge=0)
    start_time: str | None = Field(None, json_schema_extra={"format": "date-time"})
    completion_time: str | None = Field(None, json_schema_extra={"format": "date-time"})
    observed_generation: int | None = Field(None, ge=0)
    progress: Progress | None = None
    metrics: dict[str, float] | None = Field(
        None, description="Latest metrics: trainLoss, evalLoss, evalAccuracy, evalF1, samplesPerSecond, ...",
    )
    parameters: Parameters | None = None
    checkpoint: CheckpointStatus | None = None
    output: OutputStatus | None = None
    tracking: TrackingStatus | None = None


class ObjectMeta(ApiModel):
    """The part of metadata the API validates; everything else passes through untouched."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(
        min_length=1, max_length=MAX_NAME_LENGTH, pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$",
        description=f"DNS-1035 label of at most {MAX_NAME_LENGTH} characters, so child names fit.",
    )
    namespace: str | None = None


class FineTuneJob(ApiModel):
    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None

    @field_validator("api_version")
    @classmethod
    def _api_version(cls, v: str) -> str:
        if v != API_VERSION:
            raise ValueError(f"apiVersion must be {API_VERSION}, got {v!r}")
        return v

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v != KIND:
            raise ValueError(f"kind must be {KIND}, got {v!r}")
        return v


def parse_time(value: str) -> datetime:
    """A time as the API writes it (RFC 3339, e.g. status.startTime)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def format_time(value: datetime) -> str:
    """A UTC time as the API writes it, to the second."""
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")
