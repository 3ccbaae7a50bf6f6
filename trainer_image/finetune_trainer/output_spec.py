"""The trainer config's sections about what a run produces and where it goes: the output location and OCI push,
the final model's evaluation and its gates, object storage of s3:// locations, and experiment tracking.
(config.py has what to train on and how; spec_base.py what both share.)
"""

from __future__ import annotations

import enum
import re

from pydantic import ConfigDict, Field, field_validator, model_validator

from finetune_trainer.spec_base import (DNS1123_SUBDOMAIN, LOCATION_PATTERN, OCI_REFERENCE_PATTERN, SECRET_KEY_PATTERN,
                                        ApiModel, Rule, SecretRef, enforce, rules_schema)

def _gate_rules() -> list[Rule]:
    return [
        Rule(
            cel="has(self.min) || has(self.max)",
            message="evaluation.gates: each gate needs min or max (or both), the bound its metric must meet",
            check=lambda g: g.min is not None or g.max is not None,
            field="min",
        ),
    ]


def _evaluation_rules() -> list[Rule]:
    return [
        Rule(
            cel="self.finalModel != 'best' || has(self.metric)",
            message="evaluation.metric is required when evaluation.finalModel is best (the eval metric that picks "
                    "the best checkpoint, e.g. eval_f1)",
            check=lambda e: e.final_model != "best" or e.metric is not None,
            field="metric",
        ),
    ]


GATE_RULES = _gate_rules()
EVALUATION_RULES = _evaluation_rules()


# What the operator hands output.push outside the config: the file with the registry credentials (the Secret's
# dockerconfigjson, mounted; never in the environment) and the FineTuneJob's uid for the artifact's lineage.
REGISTRY_AUTH_ENV = "FINETUNE_REGISTRY_AUTH"
REGISTRY_SECRET_KEY = ".dockerconfigjson"
JOB_UID_ENV = "FINETUNE_JOB_UID"


class PushSpec(ApiModel):
    """Where the final model goes as an OCI artifact (docs/export.md)."""

    reference: str = Field(
        min_length=1, max_length=512, json_schema_extra={"pattern": OCI_REFERENCE_PATTERN},
        description='Registry, repository and tag to push the final model (or adapter) to, e.g. '
                    '"registry.example.com/team/mrpc-bert:v1" (no scheme; the registry host is required).',
    )
    secret_ref: SecretRef | None = Field(
        None, description="Secret of type kubernetes.io/dockerconfigjson (kubectl create secret docker-registry) "
                          "with credentials for the registry; unset pushes anonymously.",
    )
    insecure: bool = Field(False, description="Talk plain HTTP to the registry (a registry on a trusted network "
                                              "only; the default is HTTPS).")

    @field_validator("reference")
    @classmethod
    def _reference(cls, v: str) -> str:
        # The CRD checks the same pattern; here the refusal says what is expected instead of quoting the regex.
        if not re.match(OCI_REFERENCE_PATTERN, v):
            raise ValueError(f"{v!r} is not registry/repository:tag, e.g. registry.example.com/team/model:v1 (the "
                             "registry host is required, a dot, a port or localhost in it; the repository in lower "
                             "case; a tag, not a digest)")
        return v


# An eval metric as the tasks name it (tasks/base.py TaskAdapter.higher_is_better): eval_f1, eval_exact_match, ...
EVAL_METRIC_PATTERN = r"^eval_[A-Za-z0-9_]+$"


class FinalModel(str, enum.Enum):
    LAST = "last"  # the weights of the last step
    BEST = "best"  # the checkpoint with the best evaluation.metric (HF's load_best_model_at_end)


class Gate(ApiModel):
    """A bound the final model's evaluation must meet; a job whose model misses one fails with reason GateFailed."""

    model_config = ConfigDict(json_schema_extra=rules_schema(GATE_RULES))

    metric: str = Field(pattern=EVAL_METRIC_PATTERN, max_length=64,
                        description="Eval metric the task reports, e.g. eval_accuracy, eval_f1, eval_perplexity.")
    min: float | None = Field(None, description="The metric must be at least this.")
    max: float | None = Field(None, description="The metric must be at most this (e.g. eval_perplexity, eval_loss).")

    @model_validator(mode="after")
    def _cross_field(self) -> Gate:
        enforce(self, GATE_RULES)
        return self

    def describe(self) -> str:
        """The bound as people write it: ">= 0.85", "<= 12", ">= 0.8, <= 0.99"."""
        return ", ".join(f"{op} {bound:g}" for op, bound in ((">=", self.min), ("<=", self.max)) if bound is not None)


class EvaluationSpec(ApiModel):
    """The final model's evaluation after training, and the gates it must pass (docs/evaluation.md)."""

    model_config = ConfigDict(json_schema_extra=rules_schema(EVALUATION_RULES))

    split: str | None = Field(
        None, min_length=1, max_length=253,
        description="Split (or file stem) of dataset.source the final model is evaluated on, e.g. test; held out "
                    "from training and from checkpoint selection. Unset: the eval split.",
    )
    final_model: FinalModel = Field(
        FinalModel.LAST, description="Which weights become the final model: last (the last step) or best (the "
        "checkpoint with the best evaluation.metric, kept whatever output.keepCheckpoints says).",
    )
    metric: str | None = Field(
        None, pattern=EVAL_METRIC_PATTERN, max_length=64,
        description="finalModel best: the eval metric that ranks checkpoints, compared in the direction the task "
                    "declares (higher accuracy/F1/BLEU, lower loss/perplexity), e.g. eval_f1.",
    )
    gates: list[Gate] | None = Field(
        None, max_length=16, description="Bounds the final model's metrics must meet; the first one missed fails "
        "the job (reason GateFailed), and nothing is published after it.",
    )

    @model_validator(mode="after")
    def _cross_field(self) -> EvaluationSpec:
        enforce(self, EVALUATION_RULES)
        return self


class OutputSpec(ApiModel):
    location: str | None = Field(
        None, max_length=1024, pattern=LOCATION_PATTERN,
        description='Where checkpoints and the final model go: "pvc://claim/path", "s3://bucket/prefix" or a '
                    "local directory (locally defaults to ./runs/<name>).",
    )
    keep_checkpoints: int = Field(2, ge=1, le=100, description="Complete checkpoints to keep.")
    merge_adapter: bool = Field(False, description="lora/hybrid: also save the base model with adapters merged.")
    push: PushSpec | None = Field(
        None, description="Also push the final model to an OCI registry as an artifact with its lineage "
                          "(base model, dataset fingerprint, strategy, metrics); status.outputs lists it.",
    )


class S3SecretRef(ApiModel):
    """The Secret holding the S3 credentials; only its keys' names travel in the spec, the values reach the
    trainer as the standard AWS environment variables."""

    name: str = Field(min_length=1, max_length=253, pattern=f"^{DNS1123_SUBDOMAIN}$",
                      description="Name of a Secret in the FineTuneJob's namespace.")
    access_key_id_key: str = Field("AWS_ACCESS_KEY_ID", min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN,
                                   description="The Secret's key holding the access key id.")
    secret_access_key_key: str = Field("AWS_SECRET_ACCESS_KEY", min_length=1, max_length=253,
                                       pattern=SECRET_KEY_PATTERN,
                                       description="The Secret's key holding the secret access key.")


class AddressingStyle(str, enum.Enum):
    AUTO = "auto"
    PATH = "path"
    VIRTUAL = "virtual"


class S3Spec(ApiModel):
    """How to reach the S3 server of the job's s3:// locations. Unset fields fall back to the operator's defaults
    (the chart's objectStorage.s3 values) and then to the standard AWS environment (AWS_ENDPOINT_URL,
    AWS_REGION, ...)."""

    endpoint: str | None = Field(None, max_length=1024, pattern=r"^https?://[^\s/]+(/\S*)?$",
                                 description="S3 endpoint URL, e.g. http://seaweedfs.storage:8333 (default: AWS).")
    region: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[a-z0-9-]+$",
                               description="Region to sign requests for, e.g. us-east-1.")
    addressing_style: AddressingStyle | None = Field(
        None, description="path (http://endpoint/bucket/key, most self-hosted servers) or virtual "
                          "(http://bucket.endpoint/key); auto lets the client choose.")
    secret_ref: S3SecretRef | None = Field(
        None, description="Secret with the credentials (keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY by "
                          "default); unset: the pod's own identity (e.g. IRSA) or none.")


class StorageSpec(ApiModel):
    s3: S3Spec | None = Field(None, description="The S3 server of s3:// locations.")


class MlflowSpec(ApiModel):
    """An MLflow tracking server the trainer logs its run to (rank 0 only)."""

    tracking_uri: str = Field(
        min_length=1, max_length=2048, pattern=r"^(https?://[^\s/]+|file:)\S*$",
        description='MLflow tracking server, e.g. "http://mlflow.mlflow:5000" ("file:" a local store).',
    )
    experiment: str | None = Field(
        None, min_length=1, max_length=500,
        description="Experiment the run is logged in, created when absent (default: the FineTuneJob's name).",
    )
    secret_ref: SecretRef | None = Field(
        None, description="Secret whose keys become the trainer's environment: MLFLOW_TRACKING_USERNAME and "
                          "MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN.",
    )


class TrackingSpec(ApiModel):
    """Experiment tracking. A tracking server that is down never fails training: the run carries on, the trainer
    retries, and the FineTuneJob gets a TrackingDegraded condition."""

    mlflow: MlflowSpec | None = Field(None, description="Log params, metrics, the final model URI and lineage to MLflow.")
    tensorboard: bool = Field(True, description="Write TensorBoard event files to <output>/tensorboard.")
