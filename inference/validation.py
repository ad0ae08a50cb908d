"""One validation for every way a model artifact arrives: the admin, the commands and the deployment API.

The checks run in this order, and the first that fails names the fault in a
sentence a data scientist can act on (an ``ArtifactError`` subclass):

1. size: not empty, at most ``PLATFORM_MAX_ARTIFACT_BYTES``; the SHA-256 is
   computed while the file is copied into the model store (``inference.uploads``);
2. format: a skops archive for scikit-learn, a native ``.keras`` archive for
   Keras. A pickle or joblib file is refused by its first bytes, before
   anything parses it, because unpickling runs arbitrary code;
3. integrity: every member of the archive reads back with its CRC, so a
   truncated or corrupt upload is refused as such;
4. safety: skops types outside the trusted list are refused before loading,
   and so is a Keras Lambda layer (Python code that safe mode will not run);
5. inputs: the model takes as many features as the registry's schema lists;
6. the model loads exactly as every server process will load it
   (``artifacts.load_runtime``: checksum, runtime, warm-up);
7. a probe batch (the model's stored sample rows, else rows of zeros) gives
   finite numbers, one output row per input row, as many values per row as the
   active version gives;
8. a classifier has one probability column per class label, in the
   estimator's own order, and each row of probabilities sums to 1.
"""

from __future__ import annotations

import json
import logging
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from .artifacts import artifact_path, load_keras_model, load_runtime, load_sklearn_estimator, trusted_sklearn_types
from .exceptions import (
    ArtifactError,
    ArtifactRejected,
    ArtifactSchemaMismatch,
    CorruptArtifact,
    InvalidInput,
    UnsafeArtifactFormat,
    UntrustedArtifact,
)
from .runtimes.base import Runtime
from .schema import InputSchema
from .uploads import ReceivedArtifact, receive

if TYPE_CHECKING:
    from .models import MLModel

logger = logging.getLogger(__name__)

#: Rows of zeros sent through a model that has no sample rows of its own.
PROBE_ROWS = 2
#: How far a row of probabilities may sum from 1 (float32 softmax rounding).
PROBABILITY_TOLERANCE = 1e-3

_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# zlib and gzip headers: what joblib.dump(..., compress=...) writes around a pickle.
_COMPRESSED_MAGICS = (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda", b"\x1f\x8b", b"ZF")


@dataclass(frozen=True)
class ValidatedArtifact:
    """What validation learnt about an artifact that passed every check."""

    checksum: str
    size_bytes: int
    #: Class labels, in the order of the probability columns; None unless a classifier.
    classes: list[str] | None
    #: Values per output row: 0 for one value per row, else the width of each output row.
    output_columns: int


def validate(
    received: ReceivedArtifact, *, framework: str, model: MLModel, classes: Sequence[str] | None = None
) -> ValidatedArtifact:
    """Run every check on a received artifact for ``model``; raise an ``ArtifactError`` naming the first fault."""
    try:
        return _validate(received, framework, model, classes)
    except ArtifactError:
        raise
    except Exception as exc:  # a check that could not finish must still end as a failure with a reason
        logger.exception("Validation of %s for %s could not finish", received.filename, model.name)
        raise ArtifactRejected(
            f"Validation could not finish ({type(exc).__name__}: {exc}); the artifact was not accepted."
        ) from exc


def _validate(
    received: ReceivedArtifact, framework: str, model: MLModel, classes: Sequence[str] | None
) -> ValidatedArtifact:
    _check_archive(received.path, framework)
    declared = [str(label) for label in classes] if classes else None
    _check_estimator(received.path, framework, model, declared)
    if framework == "keras" and model.task == "classification" and not declared:
        raise ArtifactSchemaMismatch(
            f"{model.name} is a classifier, and a Keras model does not know its class labels: give them with "
            "the version (one per probability column, in order)."
        )
    probe = _probe_rows(model)
    runtime = _load_as_served(received, framework, model, declared, max_batch_size=len(probe))
    return _check_outputs(runtime, model, probe, received)


def validate_artifact(
    source: Path | str | IO[bytes], *, framework: str, model: MLModel, classes: Sequence[str] | None = None
) -> ValidatedArtifact:
    """Check an artifact for ``model`` without registering it (a dry run of what registration checks)."""
    received = receive(source, framework=framework)
    try:
        return validate(received, framework=framework, model=model, classes=classes)
    finally:
        received.discard()


# -- format and safety, before any model code runs ---------------------------------------------------


def _foreign_format(head: bytes) -> str:
    if head.startswith(b"\x80"):
        return "a pickle or joblib file"
    if head.startswith(_COMPRESSED_MAGICS):
        return "a compressed joblib or pickle file"
    if head.startswith(_HDF5_MAGIC):
        return "an HDF5 file (the legacy Keras .h5 format)"
    return "not a zip archive at all"


def _check_archive(path: Path, framework: str) -> None:
    with open(path, "rb") as handle:
        head = handle.read(8)
    if framework == "sklearn":
        expected, how = "skops archive", "save the estimator with skops.io.dump(estimator, 'model.skops')"
    else:
        expected, how = "native .keras archive", "save the model with model.save('model.keras')"
    if not head.startswith(_ZIP_MAGIC):
        raise UnsafeArtifactFormat(
            f"The artifact is {_foreign_format(head)}, not a {expected}. Pickle, joblib and HDF5 files can run "
            f"arbitrary code or lose the model's structure when loaded, so only safe formats are accepted: {how}."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
            names = set(archive.namelist())
            config = archive.read("config.json") if "config.json" in names else None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise CorruptArtifact(
            f"The artifact is truncated or corrupt ({exc}); upload the complete file again."
        ) from exc
    if broken is not None:
        raise CorruptArtifact(
            f"The artifact is corrupt: its member {broken!r} fails its checksum; upload the complete file again."
        )
    if framework == "sklearn":
        if "schema.json" not in names:
            raise UnsafeArtifactFormat(f"The artifact is a zip archive but not a {expected}; {how}.")
        _refuse_untrusted_types(path)
    if framework == "keras":
        if config is None:
            raise UnsafeArtifactFormat(f"The artifact is a zip archive but not a {expected}; {how}.")
        _refuse_lambda_layers(config)


def _refuse_untrusted_types(path: Path) -> None:
    import skops.io

    try:
        untrusted = skops.io.get_untrusted_types(file=path)
    except Exception as exc:  # schema.json that skops cannot read
        raise CorruptArtifact(f"The skops archive cannot be read ({type(exc).__name__}: {exc}).") from exc
    refused = sorted(set(untrusted) - set(trusted_sklearn_types()))
    if refused:
        raise UntrustedArtifact(
            f"The skops artifact contains types outside the trusted list: {', '.join(refused)}. Loading them "
            "would import and run their code; use scikit-learn's own estimators, or ask an operator to add "
            "these types to PLATFORM_SKOPS_TRUSTED_TYPES if you trust their source."
        )


def _layers_named(node: Any, class_name: str) -> Iterator[str]:
    if isinstance(node, dict):
        if node.get("class_name") == class_name:
            config = node.get("config")
            yield str(config.get("name", "?")) if isinstance(config, dict) else "?"
        for value in node.values():
            yield from _layers_named(value, class_name)
    elif isinstance(node, list):
        for value in node:
            yield from _layers_named(value, class_name)


def _refuse_lambda_layers(config: bytes) -> None:
    try:
        document = json.loads(config)
    except ValueError as exc:
        raise CorruptArtifact(f"The Keras archive's config.json is not valid JSON ({exc}).") from exc
    lambdas = list(_layers_named(document, "Lambda"))
    if lambdas:
        raise UnsafeArtifactFormat(
            f"The Keras model contains a Lambda layer ({', '.join(lambdas)}), whose Python code would run when "
            "it is loaded; safe mode refuses it. Replace it with built-in layers or a registered custom layer."
        )


# -- the model itself ------------------------------------------------------------------------------------


def _expected_width(estimator: Any, framework: str) -> int | None:
    if framework == "sklearn":
        width = getattr(estimator, "n_features_in_", None)
        return int(width) if isinstance(width, int | np.integer) else None
    inputs = getattr(estimator, "inputs", None) or []
    if len(inputs) != 1:
        raise ArtifactSchemaMismatch(
            f"The Keras model has {len(inputs)} inputs; the platform feeds one array of features, so build it "
            "with a single keras.Input(shape=(n_features,))."
        )
    shape = tuple(inputs[0].shape)
    if len(shape) != 2:
        raise ArtifactSchemaMismatch(
            f"The Keras model's input has shape {shape}; the platform feeds rows of features, shape (None, n)."
        )
    return int(shape[-1]) if shape[-1] is not None else None


def _check_estimator(path: Path, framework: str, model: MLModel, classes: list[str] | None) -> None:
    """Load the artifact with the safe loaders and compare its input width and labels with the schema.

    The artifact is loaded again by ``load_runtime`` afterwards: this first load
    names a wrong width or label order in the model's terms, where the
    server's warm-up would only fail deep inside the framework.
    """
    try:
        estimator = load_sklearn_estimator(path) if framework == "sklearn" else load_keras_model(path)
    except UntrustedArtifact:
        raise
    except Exception as exc:  # a file the framework cannot read, or one safe mode refuses
        raise CorruptArtifact(
            f"The {framework} artifact could not be loaded ({type(exc).__name__}: {exc}); check that it was "
            "saved by the library versions the server runs."
        ) from exc
    width = _expected_width(estimator, framework)
    if width is not None and width != len(model.inputs):
        raise ArtifactSchemaMismatch(
            f"The model takes {width} input features, but {model.name} declares {len(model.inputs)} "
            f"({', '.join(model.inputs)}); train it on exactly those features, in that order."
        )
    known = getattr(estimator, "classes_", None)
    if framework == "sklearn" and classes and known is not None:
        own = [str(label) for label in known]
        if own != classes:
            raise ArtifactSchemaMismatch(
                f"The estimator's classes are ({', '.join(own)}) but the version declares "
                f"({', '.join(classes)}); its probability columns follow the estimator's order."
            )


def _probe_rows(model: MLModel) -> np.ndarray:
    schema = InputSchema(model.inputs)
    if not model.sample_inputs:
        return np.zeros((PROBE_ROWS, schema.n_features))
    try:
        return schema.to_array(model.sample_inputs, max_rows=len(model.sample_inputs))
    except InvalidInput as exc:
        raise ArtifactSchemaMismatch(
            f"The sample rows stored with {model.name} do not fit its inputs ({exc}); correct them in the admin."
        ) from exc


def _load_as_served(
    received: ReceivedArtifact, framework: str, model: MLModel, classes: list[str] | None, *, max_batch_size: int
) -> Runtime:
    from .models import ModelVersion

    # An unsaved version pointing at the incoming file: the server's own loading path, checksum first.
    candidate = ModelVersion(
        model=model, version=0, framework=framework, artifact=received.relative, checksum=received.checksum,
        metadata={"classes": classes} if classes else {},
    )
    if artifact_path(candidate.artifact) != received.path.resolve():
        raise ArtifactError("The received artifact is not inside the model store.")
    try:
        return load_runtime(candidate, max_batch_size=max_batch_size)
    except ArtifactError as exc:
        cause = exc.__cause__ or exc
        raise ArtifactRejected(
            f"The artifact does not load the way the server loads it: {cause}"
        ) from exc
    except Exception as exc:  # the warm-up call raised inside the framework
        raise ArtifactRejected(
            f"The model failed its warm-up call on rows of {len(model.inputs)} features "
            f"({type(exc).__name__}: {exc})."
        ) from exc


def _active_output_columns(model: MLModel) -> int | None:
    active = model.versions.filter(is_active=True).first() if model.pk else None
    if active is None:
        return None
    columns = active.metadata.get("output_columns")
    return columns if isinstance(columns, int) else None


def _check_outputs(
    runtime: Runtime, model: MLModel, probe: np.ndarray, received: ReceivedArtifact
) -> ValidatedArtifact:
    what = "the model's sample rows" if model.sample_inputs else "rows of zeros"
    try:
        outputs = np.asarray(runtime.predict(probe))
    except Exception as exc:
        raise ArtifactRejected(f"The model raised on {what} ({type(exc).__name__}: {exc}).") from exc
    rows = probe.shape[0]
    if outputs.ndim == 0 or outputs.shape[0] != rows or outputs.ndim > 2:
        raise ArtifactSchemaMismatch(
            f"The model returned output of shape {outputs.shape} for {rows} rows; it must return one output "
            "row per input row, shape (rows,) or (rows, values)."
        )
    if outputs.dtype.kind not in "fiu":
        raise ArtifactSchemaMismatch(
            f"The model returns {outputs.dtype} values, not numbers; a {model.task} model must return "
            "numbers (is it a classifier registered under a regression model?)."
        )
    if not np.isfinite(outputs).all():
        raise ArtifactRejected(f"The model returns NaN or infinite values for {what}; fix the model or its inputs.")
    columns = 0 if outputs.ndim == 1 else int(outputs.shape[1])
    if model.task == "classification":
        _check_probabilities(runtime, outputs, what)
    else:
        active = _active_output_columns(model)
        if active is not None and active != columns:
            raise ArtifactSchemaMismatch(
                f"The model returns {columns or 1} value(s) per row, but the active version of {model.name} "
                f"returns {active or 1}; clients would receive a different shape. Register it as a new model."
            )
    return ValidatedArtifact(received.checksum, received.size_bytes, runtime.classes, columns)


def _check_probabilities(runtime: Runtime, outputs: np.ndarray, what: str) -> None:
    classes = runtime.classes or []
    found = outputs.shape[1] if outputs.ndim == 2 else 0
    if found != len(classes):
        raise ArtifactSchemaMismatch(
            f"The classifier has {len(classes)} class labels ({', '.join(classes)}) but returns {found} "
            "probability columns; give one label per column, in the order of the columns."
        )
    sums = outputs.sum(axis=1)
    if (outputs < -PROBABILITY_TOLERANCE).any() or not np.allclose(sums, 1.0, atol=PROBABILITY_TOLERANCE):
        raise ArtifactSchemaMismatch(
            f"The classifier's outputs for {what} are not probabilities (a row sums to {float(sums[0]):.3g}); "
            "end the model with a softmax, or register it with the task 'other'."
        )


__all__ = ["ValidatedArtifact", "validate", "validate_artifact"]
