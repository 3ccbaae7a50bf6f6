"""The FineTuneJob API (finetune.io/v1alpha1): spec and status as pydantic models.

These models are the single source of truth: the CRD in crds/ is generated from them (see crd.py), the operator
and `finetune run` validate manifests with them, and the trainer's part of the spec is the trainer's own config
model, so the two cannot drift.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from finetune_operator.core_types import Toleration
from finetune_operator.pod_overrides import PodOverrides
from finetune_trainer.config import JOB_RULES, DatasetSpec, ModelSpec, StrategySpec, Task, TrainingSpec
from finetune_trainer.output_spec import EvaluationSpec, OutputSpec, StorageSpec, TrackingSpec
from finetune_trainer.spec_base import DNS1123_SUBDOMAIN, ApiModel, Rule, enforce, rules_schema

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
    tolerations: list[Toleration] | None = Field(
        None, max_length=64, description="Deprecated: use spec.pod.tolerations (both lists are applied).")
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


# Rules across spec fields, where what a field allows depends on another part of the spec: the trainer's own
# (JOB_RULES: task, dataset and training) and the operator's, which see resources.
SPEC_RULES = [*JOB_RULES, Rule(
    cel="!has(self.strategy.lora) || !has(self.strategy.lora.quantization) || "
        "(has(self.resources) && has(self.resources.gpus) && self.resources.gpus > 0)",
    message="spec.strategy.lora.quantization (4-bit base weights, QLoRA) needs GPUs, where bitsandbytes' 4-bit "
            "kernels run: set spec.resources.gpus to at least 1, or remove the quantization to train LoRA on "
            "full-precision weights on CPUs",
    check=lambda s: s.strategy.lora is None or s.strategy.lora.quantization is None or s.resources.gpus > 0,
    field="strategy.lora.quantization",
)]


class FineTuneJobSpec(ApiModel):
    """What to fine-tune, on what data, how, with which resources, and where the result goes."""

    model_config = ConfigDict(json_schema_extra=rules_schema(SPEC_RULES))

    model: ModelSpec = Field(description="The pre-trained model to start from (immutable).", json_schema_extra={
        "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "spec.model is immutable"}]})
    task: Task = Field(description="What the model learns to do; decides the head, the columns read and the "
                                   "metrics (immutable).", json_schema_extra={
        "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "spec.task is immutable"}]})
    dataset: DatasetSpec = Field(description="The training data: where it is, its splits and columns.")
    strategy: StrategySpec = Field(description="Which parameters train: full, partial (chosen blocks), lora or "
                                               "hybrid (immutable).", json_schema_extra={
        "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "spec.strategy is immutable"}]})
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Hyperparameters: epochs, batch size, "
                                   "learning rate, precision, evaluation and checkpoint cadence.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="GPUs, nodes, CPU and memory of "
                                     "the trainer pods, and where they may run.")
    output: OutputSpec = Field(default_factory=OutputSpec, description="Where checkpoints and the final model go.")
    storage: StorageSpec | None = Field(None, description="Object storage of s3:// locations: endpoint, region, "
                                        "addressing style and the credentials' Secret.")
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description="Retries, deadline, cleanup and suspension "
                                  "of the whole job.")
    evaluation: EvaluationSpec | None = Field(
        None, description="Evaluate the final model after training (which checkpoint, which split) and gate the "
        "job on its metrics; the verdict is in status.evaluation and the EvaluationPassed condition.",
    )
    queue_name: str | None = Field(
        None, max_length=63, pattern=f"^{DNS1123_SUBDOMAIN}$",
        description="Kueue LocalQueue in the job's namespace (a DNS subdomain, as Kueue requires of the label); copied "
                    "to the kueue.x-k8s.io/queue-name label of each attempt's Job, which is created suspended for "
                    "Kueue to admit (docs/kueue.md).",
    )
    image: str | None = Field(None, max_length=1024, description="Trainer image (default: the operator's setting).")
    pod_metadata: PodMetadata | None = Field(None, description="Labels and annotations added to trainer pods.")
    pod: PodOverrides | None = Field(
        None, description="Settings added to the trainer pods: env, serviceAccountName, volumes and mounts, "
                          "affinity, tolerations, imagePullSecrets (docs/pod-overrides.md).")
    notify: NotifySpec | None = Field(None, description="Notification sinks of this job (docs/notifications.md).")
    tracking: TrackingSpec | None = Field(
        None, description="Experiment tracking (docs/tracking.md); unset: TensorBoard event files in the output.",
    )

    @model_validator(mode="after")
    def _cross_field(self) -> FineTuneJobSpec:
        enforce(self, SPEC_RULES)
        return self


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
    """One aspect of the job's state, as Kubernetes conditions are."""

    type: str = Field(max_length=316, description="Ready (the summary, with the latest reason and message), "
                                                  "Running, Succeeded, Failed or Suspended.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(max_length=1024, description="Why, in one CamelCase word (e.g. Retrying, ImagePullFailed).")
    message: str = Field("", max_length=32768, description="What happened, for a person.")
    last_transition_time: str | None = Field(None, description="When status last changed.",
                                             json_schema_extra={"format": "date-time"})
    observed_generation: int | None = Field(None, ge=0, description="metadata.generation this condition is about.")


class Progress(ApiModel):
    """How far the training loop is, read from the running trainer."""

    step: int = Field(0, ge=0, description="Optimizer steps done.")
    total_steps: int | None = Field(None, ge=0, description="Optimizer steps of the whole run.")
    epoch: float | None = Field(None, ge=0, description="Epochs done (fractional).")
    percent: float | None = Field(None, ge=0, le=100, description="Percent of the steps done.")
    eta_seconds: int | None = Field(None, ge=0, description="Estimated seconds to the last step at the current pace.")
    last_step_time: str | None = Field(
        None, json_schema_extra={"format": "date-time"},
        description="When step last moved while Running: the clock of the Stalled condition.")


class Parameters(ApiModel):
    """How much of the model the strategy trains."""

    trainable: int = Field(ge=0, description="Parameters that train.")
    total: int = Field(ge=0, description="Parameters of the model.")


class CheckpointStatus(ApiModel):
    """The latest checkpoint, which a retry or a resume starts from."""

    location: str = Field(description="Where it is, as the user wrote the output (e.g. pvc://claim/path).")
    step: int = Field(ge=0, description="The optimizer step it was saved at.")


class OutputStatus(ApiModel):
    """The final model."""

    location: str = Field(description="Where the final model (or adapter) is, e.g. pvc://claim/path/model.")


class OutputKind(str, enum.Enum):
    MODEL = "model"  # the final model's files at output.location
    OCI = "oci"  # the artifact output.push sent to a registry


class ProducedOutput(ApiModel):
    """One thing the job produced, where it is and its content digest (docs/export.md says how each is computed)."""

    kind: OutputKind = Field(description="model (the files at output.location) or oci (the registry artifact).")
    uri: str = Field(max_length=2048, description="pvc://..., a path, or oci://registry/repo:tag@sha256:...")
    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$", description="sha256 of the model's file listing "
                        "(sha256sum format, sorted by path), or the artifact's manifest digest.")


class GateResult(ApiModel):
    """One gate of spec.evaluation.gates and the final model's value against it."""

    model_config = ConfigDict(allow_inf_nan=False)  # JSON has no inf/NaN: the status patch would be refused

    metric: str = Field(max_length=64, description="The eval metric the gate bounds, e.g. eval_f1.")
    value: float = Field(description="The final model's value of the metric.")
    gate: str = Field(max_length=64, description='The bound, e.g. ">= 0.85".')
    passed: bool = Field(description="The value meets the bound.")
    min: float | None = Field(None, description="The gate's lower bound, if it has one.")
    max: float | None = Field(None, description="The gate's upper bound, if it has one.")


class EvaluationStatus(ApiModel):
    """spec.evaluation's verdict on the final model, as the trainer reported it."""

    model_config = ConfigDict(allow_inf_nan=False)

    split: str | None = Field(None, max_length=253, description="The split the final model was evaluated on.")
    final_model: str | None = Field(None, max_length=16, description="last or best.")
    step: int | None = Field(None, ge=0, description="The step whose weights are the final model.")
    metrics: dict[str, float] | None = Field(None, description="The final model's metrics on the split.")
    gates: list[GateResult] | None = Field(None, max_length=16, description="Each gate with its verdict.")
    passed: bool | None = Field(None, description="Every gate passed (or there are none).")
    headline: str | None = Field(None, max_length=128, description='The printer column: "eval_f1=0.9123".')


class WorkDone(ApiModel):
    """What training processed, as the trainer counts it."""

    samples: int | None = Field(None, ge=0, description="Training examples processed (all ranks).")
    tokens: int | None = Field(None, ge=0, description="Real (non-padding) training tokens processed.")
    mfu: float | None = Field(None, ge=0, le=1, description="Average model FLOP utilisation, where the GPU is known.")


class ResourceHours(ApiModel):
    gpu_hours: float = Field(0, ge=0, description="Requested GPUs x hours, over every pod.")
    cpu_core_hours: float = Field(0, ge=0, description="Requested CPU cores x hours.")
    memory_gib_hours: float = Field(0, ge=0, description="Requested memory (GiB) x hours.")


class AttemptUsage(ResourceHours, WorkDone):
    """What one attempt used."""

    attempt: int = Field(ge=1, description="The attempt's number (its Job is <name>-a<N>).")
    seconds: float = Field(0, ge=0, description="The attempt's longest pod lifetime (container start to finish).")


class Cost(ApiModel):
    """A price: amount and currency."""

    amount: float = Field(ge=0, description="The estimated cost so far.")
    currency: str = Field(max_length=16, description="The price table's currency, e.g. USD.")


class UsageStatus(ResourceHours, WorkDone):
    """What the job used, summed over every attempt (failed ones too); docs/usage-cost.md."""

    wall_seconds: int | None = Field(None, ge=0, description="From status.startTime to completionTime (or now).")
    estimated_cost: Cost | None = Field(None, description="Resource hours priced with the operator's price table.")
    attempts: list[AttemptUsage] | None = Field(None, max_length=128, description="Each attempt's own usage.")


class TrackingStatus(ApiModel):
    """Where the run's tracking data is, as the trainer reported it."""

    mlflow_run_id: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                                      description="The MLflow run (every attempt of the job logs to the same run).")
    mlflow_experiment_id: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                                              description="The MLflow experiment the run is in.")
    tensorboard: str | None = Field(None, max_length=1024, description="Location of the TensorBoard event files.")


class FineTuneJobStatus(ApiModel):
    """What the operator observed: written by the operator only."""

    phase: Phase | None = Field(None, description="Pending, Running, Succeeded, Failed or Suspended.")
    conditions: list[Condition] | None = Field(None, description="The job's conditions, one per type.",
                                               json_schema_extra={"x-kubernetes-list-type": "map",
                                                                  "x-kubernetes-list-map-keys": ["type"]})
    attempts: int | None = Field(None, ge=0, description="Attempts started; attempt N runs as the Job "
                                 "<name>-a<N> and its pods.")
    start_time: str | None = Field(None, description="When the first attempt started.",
                                   json_schema_extra={"format": "date-time"})
    completion_time: str | None = Field(None, description="When the job succeeded or failed.",
                                        json_schema_extra={"format": "date-time"})
    observed_generation: int | None = Field(None, ge=0, description="metadata.generation the status is about.")
    progress: Progress | None = Field(None, description="Steps, epoch, percent and ETA of the running attempt.")
    metrics: dict[str, float] | None = Field(
        None, description="Latest metrics: trainLoss, evalLoss, evalAccuracy, evalF1, samplesPerSecond, ...",
    )
    parameters: Parameters | None = Field(None, description="Trainable and total parameters.")
    checkpoint: CheckpointStatus | None = Field(None, description="The latest checkpoint.")
    output: OutputStatus | None = Field(None, description="The final model, once the job succeeded.")
    outputs: list[ProducedOutput] | None = Field(
        None, max_length=16, description="Every output the job produced, each with its URI and digest.")
    evaluation: EvaluationStatus | None = Field(None, description="The final model's evaluation and the gates' "
                                                "verdicts (spec.evaluation).")
    usage: UsageStatus | None = Field(None, description="What the job used over every attempt, and its estimated "
                                      "cost.")
    tracking: TrackingStatus | None = Field(None, description="Where the run is tracked (MLflow run id, TensorBoard "
                                            "event files) and whether tracking degraded.")


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
