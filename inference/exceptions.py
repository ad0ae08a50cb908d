"""Errors raised by the model registry, the runtimes and the batching pool."""

from .outcomes import Outcome


class InferenceError(Exception):
    """Base class for every error the inference layer raises."""

    code: str = Outcome.INTERNAL.value


class ArtifactError(InferenceError):
    """A model artifact is missing, unreadable or of an unsupported framework."""

    code = Outcome.MODEL_UNAVAILABLE.value


class ArtifactChecksumMismatch(ArtifactError):
    """A model artifact's bytes differ from the checksum recorded in the registry."""


class UntrustedArtifact(ArtifactError):
    """A scikit-learn artifact refers to types outside the trusted list."""


class UnknownModel(InferenceError):
    """No such model or version is registered, or the caller may not use it."""

    code = Outcome.UNKNOWN_MODEL.value


class ModelUnavailable(InferenceError):
    """The model exists but is not loaded, or failed to load."""

    code = Outcome.MODEL_UNAVAILABLE.value


class InvalidInput(InferenceError):
    """The request's rows do not fit the model's input schema."""

    code = Outcome.INVALID_INPUT.value


class Overloaded(InferenceError):
    """The model's queue is full; the client should retry later."""

    code = Outcome.OVERLOADED.value

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class DeadlineExceeded(InferenceError):
    """The request waited in the queue past its deadline and was not run."""

    code = Outcome.TIMEOUT.value


class ModelCallFailed(InferenceError):
    """The model raised, or returned output that does not fit the batch."""

    code: str = Outcome.INTERNAL.value


class ArtifactRejected(ArtifactError):
    """An uploaded artifact failed validation; its message says what to change."""


class ArtifactTooLarge(ArtifactRejected):
    """An artifact is larger than ``PLATFORM_MAX_ARTIFACT_BYTES``."""


class UnsafeArtifactFormat(ArtifactRejected):
    """An artifact is not in a safe format: a pickle or joblib file, legacy HDF5, or a Keras Lambda layer."""


class CorruptArtifact(ArtifactRejected):
    """An artifact is empty, truncated or otherwise unreadable."""


class ArtifactSchemaMismatch(ArtifactRejected):
    """A model's inputs, outputs or class labels do not match the schema registered for it."""


class DeploymentError(InferenceError):
    """A change to what a model serves was refused."""


class InvalidDeployment(DeploymentError):
    """A deployment request is malformed: an unknown framework, or an incomplete schema for a new model."""


class DeploymentConflict(DeploymentError):
    """A change contradicts a version's state, e.g. retiring the active version without naming a replacement."""


class VersionFailed(DeploymentError):
    """A version was recorded as failed, by validation or because its file changed; ``reason`` says why."""

    def __init__(self, message: str, *, model: str, version: int, reason: ArtifactError) -> None:
        super().__init__(message)
        self.model = model
        self.version = version
        self.reason = reason
