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
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

# Exit codes of `python -m finetune_trainer` (documented in README "Exit codes").
EXIT_SUCCESS = 0
EXIT_PERMANENT = 2  # bad config, unknown layer, data schema mismatch, out of memory: a retry cannot fix it
EXIT_RETRYABLE = 75  # EX_TEMPFAIL: preemption, SIGTERM/SIGINT, I/O; a new attempt resumes from the checkpoint

# Where models, data and outputs can live: a PersistentVolumeClaim (its name a DNS-1123 subdomain, as the
# apiserver requires), a URI of a scheme the trainer reads, or a plain path.
DNS1123_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
LOCATION_PATTERN = rf"^(pvc://{DNS1123_SUBDOMAIN}(/.*)?|(hf|pkg|s3|gs)://\S+|[^:\s][^:]*)$"
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


STRATEGY_RULES = _strategy_rules()
DATASET_RULES = _dataset_rules()


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
        description='Where the pre-trained model lives: "hf://org/name", "pvc://claim/path" or a local path.',
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
        description='"hf://name?config=c", "pvc://claim/dir", a local file or directory.',
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


class LoraSpec(ApiModel):
    r: int = Field(8, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(16, ge=1, le=4096, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA branch.")
    targets: list[str] = Field(
        default_factory=lambda: ["auto"], min_length=1, max_length=64,
        description='Module names to adapt; ["auto"] resolves the attention and MLP projections per architecture.',
    )


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
        32, ge=1, le=65536, description="Examples per device per step, counted before causal-LM packing: a step "
        "holds at most batchSize x dataset.maxLength tokens per device.",
    )
    gradient_accumulation: int = Field(1, ge=1, le=1024, description="Micro-batches per optimizer step.")
    learning_rate: float = Field(2e-5, gt=0, le=1, description="Peak learning rate.")
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
        True, description="Causal LM: pack each step's batchSize examples into padding-free rows of at most "
        "dataset.maxLength tokens.",
    )
    early_stopping: EarlyStopping | None = Field(None, description="Stop when an eval metric stops improving.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")
    dropout: float | None = Field(
        None, ge=0, lt=1,
        description="Set every dropout probability in the model's config (hidden, attention, classifier) to this; "
                    "unset keeps the model's own. 0 also trains faster on CPU, where drawing the masks is costly.",
    )


class OutputSpec(ApiModel):
    location: str | None = Field(
        None, max_length=1024, pattern=LOCATION_PATTERN,
        description='Where checkpoints and the final model go: "pvc://claim/path" or a local directory '
                    "(locally defaults to ./runs/<name>).",
    )
    keep_checkpoints: int = Field(2, ge=1, le=100, description="Complete checkpoints to keep.")
    merge_adapter: bool = Field(False, description="lora/hybrid: also save the base model with adapters merged.")


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
    """Everything the trainer needs; the operator writes it into the pod's ConfigMap, `finetune run` builds it
    from the same FineTuneJob."""

    name: str = Field(min_length=1, max_length=253, description="Job name, used in metrics labels and summaries.")
    model: ModelSpec
    task: Task
    dataset: DatasetSpec
    strategy: StrategySpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    metrics_port: int = Field(9090, ge=0, le=65535, description="Prometheus port (0 picks a free one).")

    @field_validator("output")
    @classmethod
    def _output_located(cls, v: OutputSpec) -> OutputSpec:
        if not v.location:
            raise ValueError("output.location must be set in a trainer config (the CLI and operator fill it in)")
        return v
