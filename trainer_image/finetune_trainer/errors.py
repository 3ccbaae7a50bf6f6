"""Failures the trainer can explain, each mapped to an exit code the operator acts on (config.EXIT_*).

A ``PermanentError`` means a retry cannot help (bad config, unknown layer, a missing column, out of memory); a
``RetryableError`` means a new attempt, resuming from the last checkpoint, may succeed. ``reason`` is a
CamelCase word the operator puts in the FineTuneJob's condition; ``field`` names the spec field at fault.
"""

from __future__ import annotations

from finetune_trainer.config import EXIT_PERMANENT, EXIT_RETRYABLE


class TrainerError(Exception):
    exit_code = EXIT_PERMANENT
    reason = "TrainerError"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class PermanentError(TrainerError):
    exit_code = EXIT_PERMANENT


class ConfigError(PermanentError):
    reason = "InvalidConfig"


class LayerSelectionError(ConfigError):
    reason = "InvalidLayerSelection"


class ModelLoadError(PermanentError):
    reason = "ModelNotFound"


class DataError(PermanentError):
    reason = "InvalidData"


class OutOfMemory(PermanentError):
    reason = "OutOfMemory"


class NonFiniteLoss(PermanentError):
    reason = "NonFiniteLoss"


class RegistryAuthFailed(PermanentError):
    """The registry refused output.push's credentials, or the Secret holds none for it."""

    reason = "RegistryAuthFailed"


class RegistryRejected(PermanentError):
    """The registry refused the push itself: unknown or invalid repository, a manifest it does not accept."""

    reason = "RegistryRejected"


class RetryableError(TrainerError):
    exit_code = EXIT_RETRYABLE
    reason = "Retryable"


class Interrupted(RetryableError):
    """SIGTERM/SIGINT: a checkpoint was saved (or none was needed); the next attempt resumes."""

    reason = "Interrupted"


class StorageError(RetryableError):
    reason = "StorageError"


class RegistryUnavailable(RetryableError):
    """The registry could not be reached or failed (5xx, 429); the next attempt pushes again, without training."""

    reason = "RegistryUnavailable"


class GateFailed(PermanentError):
    """The final model missed a bound of spec.evaluation.gates: training worked, the model is not good enough, and
    a retry would train the same model again."""

    reason = "GateFailed"
