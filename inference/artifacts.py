"""Artifact storage: saving models to the model store and loading them back safely.

Artifacts are kept in safe formats only: skops for scikit-learn (never pickle
or joblib) and ``.keras`` for Keras, loaded with ``safe_mode`` on. Every load
checks the artifact's SHA-256 against the registry first.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction

from .exceptions import ArtifactChecksumMismatch, ArtifactError, UntrustedArtifact

if TYPE_CHECKING:
    from .models import MLModel, ModelVersion
    from .runtimes.base import Runtime

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 20


def model_store() -> Path:
    return Path(settings.MODEL_STORE)


def artifact_path(relative: str) -> Path:
    """Resolve an artifact path inside the model store, refusing any escape from it."""
    store = model_store().resolve()
    path = (store / relative).resolve()
    if store != path and store not in path.parents:
        raise ArtifactError(f"Artifact path {relative!r} points outside the model store.")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(version: ModelVersion) -> Path:
    """Return the artifact's path after checking its bytes match the registry."""
    path = artifact_path(version.artifact)
    if not path.is_file():
        raise ArtifactError(f"Artifact {version.artifact!r} of {version} is missing from the model store.")
    actual = sha256_file(path)
    if actual != version.checksum:
        raise ArtifactChecksumMismatch(
            f"Artifact {version.artifact!r} of {version} has checksum {actual[:12]}…, but the registry "
            f"records {version.checksum[:12]}…; refusing to load a file that changed after registration."
        )
    return path


def save_sklearn(estimator: Any, relative: str) -> str:
    """Write a scikit-learn estimator with skops and return the file's checksum."""
    import skops.io

    path = artifact_path(relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    skops.io.dump(estimator, path)
    return sha256_file(path)


def save_keras(model: Any, relative: str) -> str:
    """Write a Keras model in the native ``.keras`` format and return its checksum."""
    if not relative.endswith(".keras"):
        raise ArtifactError(f"Keras artifacts must end in '.keras', not {relative!r}.")
    path = artifact_path(relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return sha256_file(path)


def trusted_sklearn_types() -> list[str]:
    """Types a skops artifact may contain beyond those skops trusts by default."""
    return list(getattr(settings, "PLATFORM_SKOPS_TRUSTED_TYPES", []))


def load_sklearn_estimator(path: Path) -> Any:
    import skops.io

    untrusted = skops.io.get_untrusted_types(file=path)
    allowed = set(trusted_sklearn_types())
    refused = [name for name in untrusted if name not in allowed]
    if refused:
        raise UntrustedArtifact(
            f"Artifact {path.name} contains types that are not trusted: {', '.join(refused)}. "
            "Add them to PLATFORM_SKOPS_TRUSTED_TYPES only if you trust their source."
        )
    return skops.io.load(path, trusted=[name for name in untrusted if name in allowed])


def load_keras_model(path: Path) -> Any:
    from .runtimes.keras import configure_tensorflow

    configure_tensorflow()
    import keras

    return keras.saving.load_model(path, compile=False, safe_mode=True)


def load_runtime(version: ModelVersion, *, max_batch_size: int) -> Runtime:
    """Verify, load and warm up the runtime that serves one model version."""
    path = verify_checksum(version)
    mlmodel = version.model
    classes = version.metadata.get("classes")
    try:
        if version.framework == version.Framework.SKLEARN:
            from .runtimes.sklearn import SklearnRuntime

            runtime: Runtime = SklearnRuntime(
                load_sklearn_estimator(path), task=mlmodel.task, n_features=len(mlmodel.inputs),
                classes=classes, compile_onnx=settings.PLATFORM_SKLEARN_ONNX, probe=_sample_rows(mlmodel),
                name=str(version),
            )
        elif version.framework == version.Framework.KERAS:
            from .runtimes.keras import KerasRuntime

            runtime = KerasRuntime(
                load_keras_model(path), task=mlmodel.task, n_features=len(mlmodel.inputs),
                classes=classes, max_batch_size=max_batch_size,
            )
        else:
            raise ArtifactError(f"{version} has unknown framework {version.framework!r}.")
    except ArtifactError:
        raise
    except Exception as exc:  # a corrupt or incompatible file
        raise ArtifactError(f"Could not load the artifact of {version}: {exc}") from exc
    runtime.warmup()
    return runtime


def _sample_rows(mlmodel: MLModel) -> Any:
    """The model's stored sample rows as an array, for the compiled runtime's probe; None when it has none.

    Read as requests are (``InputSchema.to_array``); rows that do not fit are left out here, since
    validating a new version already refuses them with the reason.
    """
    from .exceptions import InvalidInput
    from .schema import InputSchema

    if not mlmodel.sample_inputs:
        return None
    try:
        return InputSchema(mlmodel.inputs).to_array(mlmodel.sample_inputs, max_rows=len(mlmodel.sample_inputs))
    except InvalidInput:
        return None


def register_version(
    mlmodel: MLModel,
    *,
    framework: str,
    artifact: str,
    checksum: str,
    metadata: dict[str, Any] | None = None,
    activate: bool = True,
) -> ModelVersion:
    """Record a new version of a model, numbered after the latest, and optionally activate it."""
    from .models import ModelVersion

    with transaction.atomic():
        latest = (
            ModelVersion.objects.select_for_update()
            .filter(model=mlmodel)
            .order_by("-version")
            .values_list("version", flat=True)
            .first()
        )
        version = ModelVersion.objects.create(
            model=mlmodel,
            version=(latest or 0) + 1,
            framework=framework,
            artifact=artifact,
            checksum=checksum,
            metadata=metadata or {},
        )
        if activate:
            version.activate()
    logger.info("Registered %s (%s, %s)", version, framework, artifact)
    return version
