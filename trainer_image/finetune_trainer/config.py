"""The trainer's input: what to fine-tune, on what, how, and where to write it.

This module is the contract between the operator and the trainer (DESIGN §4). It imports pydantic only, so the
operator can build its FineTuneJob API on top of it without pulling in torch. Field names are camelCase on the
wire (YAML/JSON, the CRD) and snake_case in Python. Here: the model, the task, the data, the strategy and the
training loop, and TrainerConfig that holds everything; output_spec.py has what a run produces and where it goes,
spec_base.py what every model shares.

Cross-field rules live next to the models they check (``*_RULES``, spec_base.Rule): each carries the CEL
expression the CRD enforces at ``kubectl apply`` and the Python predicate that ``finetune run``/``plan`` and the
trainer enforce, with one message for both, so the two paths refuse the same specs with the same words.
"""

from __future__ import annotations

import enum

from pydantic import ConfigDict, Field, field_validator, model_validator

from finetune_trainer import defaults
from finetune_trainer.output_spec import EvaluationSpec, OutputSpec, StorageSpec, TrackingSpec
from finetune_trainer.spec_base import (LAYER_SELECTOR_PATTERN, LOCATION_PATTERN, ApiModel, Rule, SecretRef, enforce,
                                        rules_schema)

# Exit codes of `python -m finetune_trainer` (documented in README "Exit codes").
EXIT_SUCCESS = 0
EXIT_PERMANENT = 2  # bad config, unknown layer, data schema mismatch, out of memory: a retry cannot fix it
EXIT_RETRYABLE = 75  # EX_TEMPFAIL: preemption, SIGTERM/SIGINT, I/O; a new attempt resumes from the checkpoint


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
    AUTO = "auto"  # bf16 on GPUs that have it and on CPUs with AMX, fp32 elsewhere (runtime.resolve_precision)
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


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
    batch_size: int | None = Field(
        None, ge=1, le=65536, description="Examples per device per micro-batch, counted before causal-LM packing: a "
        "micro-batch holds at most batchSize x dataset.maxLength tokens per device (and at most batchTokens when "
        "set). " + defaults.describe_batch(),
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
    precision: Precision = Field(
        Precision.AUTO, description="auto, fp32, bf16 or fp16 (GPUs only). auto: bf16 autocast on GPUs with bf16 "
        "and on CPUs with AMX bf16 tiles, fp32 elsewhere; weights and optimizer state stay fp32.")
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
                    "unset keeps the model's own. 0 also trains a little faster, most on CPU.",
    )


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
        # The batch size and learning rate are resolved here, where the strategy is known, so everything
        # downstream (optimizer, batches, plan, tracking params, the config the operator writes) reads one number.
        if self.training.batch_size is None:
            size = defaults.default_batch_size(StrategyType(self.strategy.type).value)
            self.training = self.training.model_copy(update={"batch_size": size})
        if self.training.learning_rate is None:
            rate = defaults.default_learning_rate(StrategyType(self.strategy.type).value, self.training.batch_size,
                                                  self.training.gradient_accumulation)
            self.training = self.training.model_copy(update={"learning_rate": rate})
        return self
