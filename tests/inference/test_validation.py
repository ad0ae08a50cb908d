"""Artifact validation: every bad upload is refused with a sentence that says what to change."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from inference.exceptions import (
    ArtifactRejected,
    ArtifactSchemaMismatch,
    ArtifactTooLarge,
    CorruptArtifact,
    InvalidDeployment,
    UnsafeArtifactFormat,
    UntrustedArtifact,
)
from inference.models import MLModel, ModelVersion
from inference.uploads import INCOMING_DIR, receive
from inference.validation import validate_artifact
from tests.support import artifacts

pytestmark = pytest.mark.django_db


def make_model(task=MLModel.Task.CLASSIFICATION, inputs=artifacts.FEATURES, **fields):
    return MLModel.objects.create(name="shop", task=task, inputs=list(inputs), outputs="label", **fields)


@pytest.fixture
def classifier_model(model_store):
    return make_model()


def incoming_files(store):
    folder = store / INCOMING_DIR
    return sorted(folder.iterdir()) if folder.exists() else []


# -- accepted ---------------------------------------------------------------------------------------


def test_a_skops_classifier_passes_with_its_checksum_size_and_classes(classifier_model, model_store, tmp_path):
    path = artifacts.skops_file(tmp_path / "model.skops")
    checked = validate_artifact(path, framework="sklearn", model=classifier_model)
    import hashlib

    assert checked.checksum == hashlib.sha256(path.read_bytes()).hexdigest()
    assert checked.size_bytes == path.stat().st_size
    assert checked.classes == artifacts.CLASSES
    assert checked.output_columns == 3
    assert incoming_files(model_store) == []


def test_a_file_object_is_validated_like_a_path(classifier_model, tmp_path):
    data = artifacts.skops_file(tmp_path / "model.skops").read_bytes()
    checked = validate_artifact(io.BytesIO(data), framework="sklearn", model=classifier_model)
    assert checked.classes == artifacts.CLASSES


def test_a_regressor_passes_on_the_models_sample_rows(model_store, tmp_path):
    model = make_model(task=MLModel.Task.REGRESSION, sample_inputs=artifacts.SAMPLE_ROWS)
    path = artifacts.skops_file(tmp_path / "model.skops", artifacts.regressor())
    checked = validate_artifact(path, framework="sklearn", model=model)
    assert checked.classes is None and checked.output_columns == 0


def test_a_keras_classifier_with_its_labels_passes(classifier_model, tmp_path):
    path = artifacts.keras_file(tmp_path / "net.keras")
    checked = validate_artifact(path, framework="keras", model=classifier_model, classes=artifacts.CLASSES)
    assert checked.classes == artifacts.CLASSES


# -- unsafe formats --------------------------------------------------------------------------------


@pytest.mark.parametrize("write", [
    artifacts.pickle_posing_as_skops,
    artifacts.joblib_posing_as_skops,
    lambda path: artifacts.joblib_posing_as_skops(path, compress=3),
], ids=["pickle", "joblib", "joblib-compressed"])
def test_a_pickle_or_joblib_file_posing_as_skops_is_refused_before_it_is_parsed(
    classifier_model, model_store, tmp_path, write
):
    path = write(tmp_path / "model.skops")
    with pytest.raises(UnsafeArtifactFormat, match=r"joblib or pickle file|pickle or joblib file") as caught:
        validate_artifact(path, framework="sklearn", model=classifier_model)
    assert "skops.io.dump" in str(caught.value)
    assert incoming_files(model_store) == []


def test_a_skops_file_with_an_untrusted_type_is_refused(classifier_model, tmp_path):
    path = artifacts.untrusted_skops(tmp_path / "model.skops")
    with pytest.raises(UntrustedArtifact, match="HalvingRegressor") as caught:
        validate_artifact(path, framework="sklearn", model=classifier_model)
    assert "PLATFORM_SKOPS_TRUSTED_TYPES" in str(caught.value)


def test_a_zip_that_is_not_a_skops_archive_is_refused(classifier_model, tmp_path):
    path = tmp_path / "model.skops"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(UnsafeArtifactFormat, match="not a skops archive"):
        validate_artifact(path, framework="sklearn", model=classifier_model)


def test_a_legacy_hdf5_keras_file_is_refused(classifier_model, tmp_path):
    path = tmp_path / "net.keras"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    with pytest.raises(UnsafeArtifactFormat, match=r"HDF5 file .*model\.save\('model\.keras'\)"):
        validate_artifact(path, framework="keras", model=classifier_model, classes=artifacts.CLASSES)


def test_a_keras_file_with_a_lambda_layer_is_refused(classifier_model, tmp_path):
    path = artifacts.keras_file(tmp_path / "net.keras", lambda_layer=True)
    with pytest.raises(UnsafeArtifactFormat, match=r"Lambda layer \(doubler\).*safe mode"):
        validate_artifact(path, framework="keras", model=classifier_model, classes=artifacts.CLASSES)


# -- damaged files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("framework", ["sklearn", "keras"])
def test_a_truncated_file_is_refused(classifier_model, tmp_path, framework):
    if framework == "sklearn":
        whole = artifacts.skops_file(tmp_path / "whole.skops")
    else:
        whole = artifacts.keras_file(tmp_path / "whole.keras")
    cut = artifacts.truncated(tmp_path / f"cut{whole.suffix}", whole)
    with pytest.raises(CorruptArtifact, match="truncated or corrupt.*upload the complete file again"):
        validate_artifact(cut, framework=framework, model=classifier_model, classes=artifacts.CLASSES)


def test_an_empty_file_is_refused(classifier_model, tmp_path):
    path = tmp_path / "model.skops"
    path.write_bytes(b"")
    with pytest.raises(CorruptArtifact, match="empty"):
        validate_artifact(path, framework="sklearn", model=classifier_model)


@pytest.mark.parametrize("as_file_object", [False, True])
def test_a_file_over_the_size_limit_is_refused_without_keeping_it(
    classifier_model, model_store, tmp_path, settings, as_file_object
):
    path = artifacts.skops_file(tmp_path / "model.skops")
    settings.PLATFORM_MAX_ARTIFACT_BYTES = path.stat().st_size - 1
    source = io.BytesIO(path.read_bytes()) if as_file_object else path
    with pytest.raises(ArtifactTooLarge, match=r"larger than the limit of .* \(PLATFORM_MAX_ARTIFACT_BYTES\)"):
        validate_artifact(source, framework="sklearn", model=classifier_model)
    assert incoming_files(model_store) == []


def test_an_unknown_framework_is_a_bad_request_not_a_bad_artifact(tmp_path, model_store):
    with pytest.raises(InvalidDeployment, match="choose one of sklearn, keras"):
        receive(artifacts.skops_file(tmp_path / "m.skops"), framework="pytorch")


# -- the model against its schema --------------------------------------------------------------------


def test_a_model_with_the_wrong_number_of_inputs_is_refused(classifier_model, tmp_path):
    path = artifacts.skops_file(tmp_path / "model.skops", artifacts.classifier(n_features=2))
    with pytest.raises(ArtifactSchemaMismatch, match=r"takes 2 input features, but shop declares 3 \(a, b, c\)"):
        validate_artifact(path, framework="sklearn", model=classifier_model)


def test_a_keras_model_with_the_wrong_number_of_inputs_is_refused(classifier_model, tmp_path):
    path = artifacts.keras_file(tmp_path / "net.keras", n_features=5)
    with pytest.raises(ArtifactSchemaMismatch, match="takes 5 input features, but shop declares 3"):
        validate_artifact(path, framework="keras", model=classifier_model, classes=artifacts.CLASSES)


def test_labels_in_another_order_than_the_estimators_are_refused(classifier_model, tmp_path):
    path = artifacts.skops_file(tmp_path / "model.skops")
    with pytest.raises(ArtifactSchemaMismatch, match=r"classes are \(high, low, mid\) but the version declares"):
        validate_artifact(path, framework="sklearn", model=classifier_model, classes=["low", "high", "mid"])


def test_a_keras_classifier_whose_labels_do_not_match_its_columns_is_refused(classifier_model, tmp_path):
    path = artifacts.keras_file(tmp_path / "net.keras", n_outputs=3)
    with pytest.raises(ArtifactSchemaMismatch, match="4 class labels .* but returns 3 probability columns"):
        validate_artifact(path, framework="keras", model=classifier_model, classes=["a", "b", "c", "d"])


def test_a_keras_classifier_without_labels_is_refused(classifier_model, tmp_path):
    path = artifacts.keras_file(tmp_path / "net.keras")
    with pytest.raises(ArtifactSchemaMismatch, match="does not know its class labels"):
        validate_artifact(path, framework="keras", model=classifier_model)


def test_a_classifier_whose_outputs_are_not_probabilities_is_refused(classifier_model, tmp_path):
    path = artifacts.keras_file(tmp_path / "net.keras", activation="linear")
    with pytest.raises(ArtifactSchemaMismatch, match="not probabilities .* softmax"):
        validate_artifact(path, framework="keras", model=classifier_model, classes=artifacts.CLASSES)


def test_a_regressor_registered_as_a_classifier_is_refused(classifier_model, tmp_path):
    path = artifacts.skops_file(tmp_path / "model.skops", artifacts.regressor())
    with pytest.raises(ArtifactRejected, match="has no predict_proba; it cannot serve a classifier"):
        validate_artifact(path, framework="sklearn", model=classifier_model)


def test_a_classifier_registered_as_a_regressor_is_refused(model_store, tmp_path):
    model = make_model(task=MLModel.Task.REGRESSION)
    path = artifacts.skops_file(tmp_path / "model.skops")
    with pytest.raises(ArtifactSchemaMismatch, match="not numbers"):
        validate_artifact(path, framework="sklearn", model=model)


def test_outputs_that_are_not_finite_on_the_sample_rows_are_refused(model_store, tmp_path):
    model = make_model(task=MLModel.Task.REGRESSION, sample_inputs=[[1e308, 1e308, 1e308]])
    path = artifacts.skops_file(tmp_path / "model.skops", artifacts.regressor())
    with pytest.raises(ArtifactRejected, match="NaN or infinite values for the model's sample rows"):
        validate_artifact(path, framework="sklearn", model=model)


def test_a_regressor_with_another_output_width_than_the_active_version_is_refused(model_store, tmp_path):
    model = make_model(task=MLModel.Task.REGRESSION)
    ModelVersion.objects.create(model=model, version=1, framework="sklearn", artifact="x", checksum="0" * 64,
                                is_active=True, status="active", metadata={"output_columns": 0})
    x = artifacts.rows()
    two_outputs = LinearRegression().fit(x, np.column_stack([x.sum(axis=1), x[:, 0]]))
    path = artifacts.skops_file(tmp_path / "model.skops", two_outputs)
    with pytest.raises(ArtifactSchemaMismatch, match="returns 2 value.* the active version of shop returns 1"):
        validate_artifact(path, framework="sklearn", model=model)
