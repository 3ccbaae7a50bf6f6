"""The trainer's input: what to fine-tune, on what, how, and where to write it.

This module is the contract between the operator and the trainer (DESIGN §4). It imports pydantic only, so the
operator can build its FineTuneJob API on top of it without pulling in torch. Field names are camelCase on the
wire (YAML/JSON, the CRD) and snake_case in Python.

Cross-field rules live in ``RULES`` next to the models: each rule carries the CEL expression the CRD enforces at
``kubectl apply`` and the Python predicate that ``finetune run``/``plan`` and the trainer enforce, with one
message for both, so the two paths refuse the same specs with the same words.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from finetune_trainer import defaults

# Exit codes of `python -m finetune_trainer` (documented in README "Exit codes").
EXIT_SUCCESS = 0
EXIT_PERMANENT = 2  # bad config, unknown layer, data schema mismatch, out of memory: a retry cannot fix it
EXIT_RETRYABLE = 75  # EX_TEMPFAIL: preemption, SIGTERM/SIGINT, I/O; a new attempt resumes from the checkpoint

# Where models, data and outputs can live: a PersistentVolumeClaim (its name a DNS-1123 subdomain, as the
# apiserver requires), a URI of a scheme the trainer reads, or a plain path.
DNS1123_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
# s3:// names a bucket (S3's naming rules) and an optional key prefix.
S3_BUCKET = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
LOCATION_PATTERN = rf"^(pvc://{DNS1123_SUBDOMAIN}(/.*)?|s3://{S3_BUCKET}(/\S*)?|(hf|pkg)://\S+|[^:\s][^:]*)$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"  # a Secret's data key, as the apiserver admits it
# registry[:port]/path/to/repo:tag for output.push. The registry must be named (a dot, a port or localhost), as
# Docker requires of anything that is not Docker Hub; repository paths as the OCI distribution spec admits them.
_OCI_COMPONENT = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*"
OCI_REFERENCE_PATTERN = (r"^(localhost(:[0-9]+)?|[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+(:[0-9]+)?|[A-Za-z0-9-]+:[0-9]+)"
                         rf"/{_OCI_COMPONENT}(/{_OCI_COMPONENT})*:[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}$")
LAYER_SELECTOR_PATTERN = r"^(all|none|(last|first|every):[0-9]+|[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*)$"


class ApiModel(BaseModel):
    """Base for every API object: camelCase on the wire, unknown fields refused (a typo is an error, not a no-op)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", use_enum_values=True,
        validate_default=True,  # so enum defaults become plain strings too, like values that were given
    )

    def wire(self) -> dict[str, Any]:
        """The object as it appears in YAML: camelCase, without unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


@dataclass(frozen=True)
class Rule:
    """One cross-field rule, enforced by the apiserver (CEL) and by Python (check) with the same message."""

    cel: str
    message: str
    check: Callable[[Any], bool]
    field: str  # dotted path from the object the rule is attached to; names the field in local errors


def _strategy_rules() -> list[Rule]:
    layered = ("partial", "hybrid")
    adapted = ("lora", "hybrid")
    return [
        Rule(
            cel="!(self.type in ['partial', 'hybrid']) || has(self.layers)",
            message="strategy.layers is required when strategy.type is partial or hybrid "
                    '(e.g. "last:2", "first:4", "every:2", "0-3,10")',
            check=lambda s: s.type not in layered or s.layers is not None,
            field="layers",
        ),
        Rule(
            cel="!has(self.lora) || self.type in ['lora', 'hybrid']",
            message="strategy.lora is allowed only when strategy.type is lora or hybrid",
            check=lambda s: s.lora is None or s.type in adapted,
            field="lora",
        ),
        Rule(
            cel="!has(self.lora) || !has(self.lora.quantization) || self.type == 'lora'",
            message="strategy.lora.quantization (4-bit base weights, QLoRA) is allowed only when strategy.type is "
                    "lora: hybrid trains whole blocks, which cannot stay 4-bit",
            check=lambda s: s.lora is None or s.lora.quantization is None or s.type == "lora",
            field="lora.quantization",
        ),
        Rule(
            cel="!has(self.lora) || !has(self.lora.quantization) || !self.embeddings",
            message="strategy.embeddings is not allowed with strategy.lora.quantization: embeddings trained in place "
                    "make the output a merged model, and merging into 4-bit weights rounds the update away",
            check=lambda s: s.lora is None or s.lora.quantization is None or not s.embeddings,
            field="embeddings",
        ),
        Rule(
            cel="!has(self.unfreeze) || self.type == 'hybrid'",
            message="strategy.unfreeze (staged unfreezing) is allowed only when strategy.type is hybrid",
            check=lambda s: s.unfreeze is None or s.type == "hybrid",
            field="unfreeze",
        ),
        Rule(
            cel="!has(self.layers) || self.type != 'full'",
            message="strategy.layers is not allowed when strategy.type is full (every block trains); "
                    "use partial to choose blocks",
            check=lambda s: s.layers is None or s.type != "full",
            field="layers",
        ),
    ]


def _dataset_rules() -> list[Rule]:
    return [
        Rule(
            cel="!(has(self.evalFraction) && has(self.eval))",
            message="dataset.eval and dataset.evalFraction are exclusive: name an eval split or hold out a "
                    "fraction of train, not both",
            check=lambda d: d.eval_fraction is None or d.eval is None,
            field="evalFraction",
        ),
    ]


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


def _job_rules() -> list[Rule]:
    """Rules across task, dataset and training: on the FineTuneJob's spec (CEL) and the trainer's config."""
    tokens = "has(self.training) && has(self.training.batchTokens)"
    max_length = "(has(self.dataset.maxLength) ? self.dataset.maxLength : 128)"
    return [
        Rule(
            cel=f"!({tokens}) || self.task == 'causal-lm'",
            message="training.batchTokens applies only to task causal-lm (the task whose examples vary from a few "
                    "tokens to maxLength); other tasks bound a micro-batch with training.batchSize",
            check=lambda j: j.training.batch_tokens is None or j.task == "causal-lm",
            field="training.batchTokens",
        ),
        Rule(
            cel=f"!({tokens}) || self.training.batchTokens >= {max_length}",
            message="training.batchTokens must be at least dataset.maxLength (default 128), so that an example of "
                    "maxLength tokens fits a micro-batch",
            check=lambda j: j.training.batch_tokens is None or j.training.batch_tokens >= j.dataset.max_length,
            field="training.batchTokens",
        ),
    ]


JOB_RULES = _job_rules()
STRATEGY_RULES = _strategy_rules()
DATASET_RULES = _dataset_rules()
GATE_RULES = _gate_rules()
EVALUATION_RULES = _evaluation_rules()


class RuleViolation(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def enforce(obj: Any, rules: list[Rule]) -> None:
    for rule in rules:
        if not rule.check(obj):
            raise RuleViolation(rule.field, rule.message)


def rules_schema(rules: list[Rule]) -> dict[str, Any]:
    return {"x-kubernetes-validations": [{"rule": r.cel, "message": r.message} for r in rules]}


class Task(str, enum.Enum):
    SEQUENCE_CLASSIFICATION = "sequence-classification"
    TOKEN_CLASSIFICATION = "token-classification"
    QUESTION_ANSWERING = "question-answering"
    CAUSAL_LM = "causal-lm"
    SEQ2SEQ = "seq2seq"


class StrategyType(str, enum.Enum):
    FULL = "full"
    PARTIAL = "partial"
    HYBRID = "hybrid"
    LORA = "lora"


class BlockPart(str, enum.Enum):
    ATTENTION = "attention"
    MLP = "mlp"
    NORM = "norm"


class DataFormat(str, enum.Enum):
    AUTO = "auto"
    CSV = "csv"
    TSV = "tsv"
    JSON = "json"
    JSONL = "jsonl"
    PARQUET = "parquet"
    DATASETS = "datasets"  # a directory written by datasets' save_to_disk
    HUB = "hub"


class Optimizer(str, enum.Enum):
    ADAMW = "adamw"
    ADAM = "adam"
    SGD = "sgd"
    RMSPROP = "rmsprop"
    ADAFACTOR = "adafactor"


class Schedule(str, enum.Enum):
    LINEAR = "linear"
    COSINE = "cosine"
    CONSTANT = "constant"


class Precision(str, enum.Enum):
    AUTO = "auto"  # bf16 on GPUs that have it, fp32 elsewhere
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class SecretRef(ApiModel):
    """A Secret in the job's own namespace; its keys become the trainer's environment (e.g. HF_TOKEN)."""

    name: str = Field(min_length=1, max_length=253, pattern=f"^{DNS1123_SUBDOMAIN}$",
                      description="Name of a Secret in the FineTuneJob's namespace.")


class ModelSpec(ApiModel):
    source: str = Field(
        min_length=1, max_length=1024, pattern=LOCATION_PATTERN,
        description='Where the pre-trained model lives: "hf://org/name", "pvc://claim/path", "s3://bucket/prefix" or '
                    "a local path.",
    )
    revision: str = Field("main", max_length=255, description="Hub revision (branch, tag or commit) for hf:// sources.")
    secret_ref: SecretRef | None = Field(None, description="Secret with credentials, e.g. HF_TOKEN for gated models.")


class ColumnMap(ApiModel):
    """Which dataset columns feed the task. Unset entries fall back to the task's conventional names."""

    text: list[str] | None = Field(
        None, min_length=1, max_length=2,
        description="Input text column(s); two for sentence pairs (e.g. [sentence1, sentence2]).",
    )
    label: str | None = Field(None, max_length=253, description="Label column (class id or name, or per-token tags).")
    tokens: str | None = Field(None, max_length=253, description="Token-classification: column with the word list.")
    question: str | None = Field(None, max_length=253, description="Question answering: question column.")
    context: str | None = Field(None, max_length=253, description="Question answering: context column.")
    answers: str | None = Field(None, max_length=253, description="Question answering: SQuAD-style answers column.")
    prompt: str | None = Field(None, max_length=253, description="Causal LM/seq2seq: input or instruction column.")
    response: str | None = Field(None, max_length=253, description="Causal LM: response column (loss only here).")
    target: str | None = Field(None, max_length=253, description="Seq2seq: target text column.")
    messages: str | None = Field(None, max_length=253, description="Causal LM: chat records (list of role/content).")


class DatasetSpec(ApiModel):
    model_config = ConfigDict(json_schema_extra=rules_schema(DATASET_RULES))

    source: str = Field(
        min_length=1, max_length=1024, pattern=LOCATION_PATTERN,
        description='"hf://name?config=c", "pvc://claim/dir", "s3://bucket/prefix", a local file or directory.',
    )
    format: DataFormat = Field(DataFormat.AUTO, description="File format; auto detects it from the file names.")
    train: str = Field("train", min_length=1, max_length=253, description="Training split (or file stem).")
    eval: str | None = Field(
        None, min_length=1, max_length=253,
        description="Evaluation split (or file stem). Unset: a validation/dev/test split if the data has one, "
                    "else evalFraction of train.",
    )
    eval_fraction: float | None = Field(
        None, gt=0, lt=1,
        description="Hold out this fraction of train for evaluation instead of a named split (default 0.1 when "
                    "the data has no eval split).",
    )
    columns: ColumnMap = Field(default_factory=ColumnMap, description="Column mapping.")
    max_length: int = Field(128, ge=8, le=32768, description="Maximum tokens per example.")
    secret_ref: SecretRef | None = Field(None, description="Secret with credentials for the data source.")

    @model_validator(mode="after")
    def _cross_field(self) -> DatasetSpec:
        enforce(self, DATASET_RULES)
        return self


class Quantization(str, enum.Enum):  # no docstring: it would replace the field's description in the CRD
    NF4 = "nf4"
    FP4 = "fp4"


class LoraSpec(ApiModel):
    r: int = Field(8, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(16, ge=1, le=4096, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout on the LoRA branch's input (peft's default, 0: a non-zero value keeps a "
        "masked copy of every adapted module's input for backward, which costs LoRA its memory and, on CPU, its speed).",
    )
    targets: list[str] = Field(
        default_factory=lambda: ["auto"], min_length=1, max_length=64,
        description='Module names to adapt; ["auto"] resolves the attention and MLP projections per architecture.',
    )
    quantization: Quantization | None = Field(
        None, description="QLoRA: keep the frozen base model's linear weights in 4 bits (bitsandbytes), nf4 "
        "(NormalFloat, QLoRA's choice) or fp4, with double quantization and bf16 compute (fp16 on GPUs without "
        "bf16); the adapters train in full precision. Needs GPUs (resources.gpus at least 1) and strategy.type lora; "
        "unset: the base stays in full precision.")


class UnfreezeStage(ApiModel):
    """Staged unfreezing for hybrid: from this epoch on, these blocks train fully too."""

    epoch: int = Field(ge=1, le=10000, description="Epoch (counted from 0) at which the stage starts.")
    layers: str = Field(pattern=LAYER_SELECTOR_PATTERN, max_length=256, description="Blocks that start to train fully.")


class StrategySpec(ApiModel):
    model_config = ConfigDict(json_schema_extra=rules_schema(STRATEGY_RULES))

    type: StrategyType = Field(description="full, partial, hybrid or lora.")
    layers: str | None = Field(
        None, pattern=LAYER_SELECTOR_PATTERN, max_length=256,
        description='Blocks that train fully: "last:N", "first:N", "every:K", "0-3,10", "all". '
                    "Required for partial and hybrid.",
    )
    parts: list[BlockPart] | None = Field(
        None, min_length=1, max_length=3,
        description="Sub-modules of the chosen blocks that train (default: the whole block).",
    )
    embeddings: bool = Field(False, description="Train the embeddings too.")
    head: bool = Field(True, description="Train the task head.")
    lora: LoraSpec | None = Field(None, description="LoRA settings, for lora and hybrid.")
    unfreeze: list[UnfreezeStage] | None = Field(
        None, max_length=64, description="Hybrid only: blocks that switch from LoRA to full training at an epoch.",
    )

    @model_validator(mode="after")
    def _cross_field(self) -> StrategySpec:
        enforce(self, STRATEGY_RULES)
        return self


class EarlyStopping(ApiModel):
    metric: str = Field("eval_loss", max_length=64, description="Eval metric to watch, e.g. eval_loss, eval_f1.")
    patience: int = Field(3, ge=1, le=1000, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as an improvement.")


class TrainingSpec(ApiModel):
    epochs: float = Field(3, gt=0, le=1000, description="Passes over the training data.")
    max_steps: int | None = Field(None, ge=1, le=10_000_000, description="Stop after this many optimizer steps.")
    batch_size: int = Field(
        32, ge=1, le=65536, description="Examples per device per micro-batch, counted before causal-LM packing: a "
        "micro-batch holds at most batchSize x dataset.maxLength tokens per device (and at most batchTokens when "
        "set).",
    )
    batch_tokens: int | None = Field(
        None, ge=8, le=16_777_216, description="Causal LM: at most this many tokens per device per micro-batch, "
        "padding included (rows x width of the packed or padded batch), so long texts make smaller batches instead "
        "of larger steps; batchSize still caps the examples. Must be at least dataset.maxLength. The loss weighs "
        "every labelled token of an optimizer step (its gradientAccumulation micro-batches, all ranks) equally. "
        "Unset: only batchSize bounds a micro-batch.",
    )
    gradient_accumulation: int = Field(1, ge=1, le=1024, description="Micro-batches per optimizer step.")
    learning_rate: float | None = Field(None, gt=0, le=1, description=defaults.describe())
    optimizer: Optimizer = Field(Optimizer.ADAMW, description="adamw, adam, sgd (momentum 0.9), rmsprop or adafactor.")
    weight_decay: float = Field(0.01, ge=0, le=1, description="Decoupled weight decay (not on biases and norms).")
    schedule: Schedule = Field(Schedule.LINEAR, description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Fraction of steps spent warming up.")
    layerwise_lr_decay: float | None = Field(
        None, gt=0, le=1, description="Multiply the learning rate by this per block below the top one.",
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the gradient norm (unset: no clipping).")
    precision: Precision = Field(Precision.AUTO, description="auto, fp32, bf16 or fp16.")
    seed: int = Field(42, ge=0, le=2**31 - 1, description="Seed for weights of new heads, dropout and data order.")
    eval_every: int | None = Field(None, ge=1, description="Evaluate every N steps (default: at each epoch end).")
    save_every: int | None = Field(None, ge=1, description="Checkpoint every N steps (default: at each epoch end).")
    log_every: int = Field(10, ge=1, le=100000, description="Update metrics every N steps.")
    group_by_length: bool = Field(True, description="Batch examples of similar length to cut padding.")
    packing: bool = Field(
        True, description="Causal LM: pack each micro-batch's examples into padding-free rows of at most "
        "dataset.maxLength tokens.",
    )
    early_stopping: EarlyStopping | None = Field(None, description="Stop when an eval metric stops improving.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")
    dropout: float | None = Field(
        None, ge=0, lt=1,
        description="Set every dropout probability in the model's config (hidden, attention, classifier) to this; "
                    "unset keeps the model's own. 0 also trains faster on CPU, where drawing the masks is costly.",
    )


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


class TrainerConfig(ApiModel):
    """Everything the trainer needs; the operator writes it into the pod's annotations, `finetune run` builds it
    from the same FineTuneJob."""

    model_config = ConfigDict(json_schema_extra=rules_schema(JOB_RULES))

    name: str = Field(min_length=1, max_length=253, description="Job name, used in metrics labels and summaries.")
    model: ModelSpec
    task: Task
    dataset: DatasetSpec
    strategy: StrategySpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    storage: StorageSpec | None = Field(None, description="Object storage of s3:// locations.")
    evaluation: EvaluationSpec | None = Field(None, description="Evaluate the final model and gate the job on it.")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    metrics_port: int = Field(9090, ge=0, le=65535, description="Prometheus port (0 picks a free one).")

    @field_validator("output")
    @classmethod
    def _output_located(cls, v: OutputSpec) -> OutputSpec:
        if not v.location:
            raise ValueError("output.location must be set in a trainer config (the CLI and operator fill it in)")
        return v

    @model_validator(mode="after")
    def _cross_field(self) -> TrainerConfig:
        enforce(self, JOB_RULES)
        # The learning rate is resolved here, where the strategy is known, so everything downstream (optimizer,
        # plan, tracking params, the config the operator writes) reads one number.
        if self.training.learning_rate is None:
            rate = defaults.default_learning_rate(StrategyType(self.strategy.type).value, self.training.batch_size,
                                                  self.training.gradient_accumulation)
            self.training = self.training.model_copy(update={"learning_rate": rate})
        return self
