"""The model registry: safe artifact formats, checksums, the store's boundary and version numbering."""

import numpy as np
import pytest
from django.db import IntegrityError
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.linear_model import LogisticRegression

from inference.artifacts import (
    artifact_path,
    load_runtime,
    register_version,
    save_keras,
    save_sklearn,
    sha256_file,
    verify_checksum,
)
from inference.exceptions import ArtifactChecksumMismatch, ArtifactError, UntrustedArtifact
from inference.models import MLModel, ModelVersion

pytestmark = pytest.mark.django_db

ROWS = np.array([[0.0, 0.0], [0.2, 0.1], [1.0, 1.2], [1.1, 0.9], [0.1, 0.3], [0.9, 1.0]])
LABELS = np.array(["low", "low", "high", "high", "low", "high"])


class HalvingRegressor(RegressorMixin, BaseEstimator):
    """An estimator skops does not know: loading it would import and run this module's code."""

    def fit(self, X, y):
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X):
        return np.asarray(X).sum(axis=1) / 2


def make_model(name="tiny", task=MLModel.Task.CLASSIFICATION, n_features=2):
    return MLModel.objects.create(
        name=name, task=task, inputs=[f"x{i}" for i in range(n_features)], outputs="label"
    )


@pytest.fixture
def classifier():
    return LogisticRegression().fit(ROWS, LABELS)


@pytest.fixture
def sklearn_version(model_store, classifier):
    """A registered, intact scikit-learn version of a two-feature classifier."""
    checksum = save_sklearn(classifier, "tiny/v1.skops")
    return register_version(
        make_model(), framework="sklearn", artifact="tiny/v1.skops", checksum=checksum,
        metadata={"classes": ["high", "low"]},
    )


def keras_version(model, relative, name="net"):
    checksum = save_keras(model, relative)
    mlmodel = make_model(name, task=MLModel.Task.REGRESSION)
    return register_version(mlmodel, framework="keras", artifact=relative, checksum=checksum)


# -- loading ----------------------------------------------------------------------------


def test_an_intact_artifact_loads_and_predicts_like_the_estimator(sklearn_version, classifier):
    runtime = load_runtime(sklearn_version, max_batch_size=8)
    np.testing.assert_allclose(runtime.predict(ROWS), classifier.predict_proba(ROWS))
    assert runtime.classes == ["high", "low"]


def test_an_artifact_whose_bytes_changed_is_refused(sklearn_version):
    path = artifact_path(sklearn_version.artifact)
    with open(path, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ArtifactChecksumMismatch, match="refusing to load a file that changed"):
        load_runtime(sklearn_version, max_batch_size=8)


def test_an_artifact_replaced_by_another_valid_model_is_refused(sklearn_version):
    save_sklearn(LogisticRegression(C=0.01).fit(ROWS, LABELS), sklearn_version.artifact)
    with pytest.raises(ArtifactChecksumMismatch):
        verify_checksum(sklearn_version)


def test_a_missing_artifact_is_refused(sklearn_version):
    artifact_path(sklearn_version.artifact).unlink()
    with pytest.raises(ArtifactError, match="missing from the model store"):
        load_runtime(sklearn_version, max_batch_size=8)


@pytest.mark.parametrize("relative", ["../outside.skops", "tiny/../../outside.skops", "/etc/passwd"])
def test_a_path_outside_the_model_store_is_refused(model_store, relative):
    (model_store.parent / "outside.skops").write_bytes(b"not a model")
    with pytest.raises(ArtifactError, match="outside the model store"):
        artifact_path(relative)


def test_a_registered_version_pointing_outside_the_store_is_not_loaded(sklearn_version, model_store):
    outside = model_store.parent / "outside.skops"
    outside.write_bytes(artifact_path(sklearn_version.artifact).read_bytes())
    sklearn_version.artifact = "../outside.skops"
    sklearn_version.checksum = sha256_file(outside)
    with pytest.raises(ArtifactError, match="outside the model store"):
        load_runtime(sklearn_version, max_batch_size=8)


def test_a_skops_file_with_an_untrusted_type_is_refused(model_store):
    checksum = save_sklearn(HalvingRegressor().fit(ROWS, None), "halving/v1.skops")
    version = register_version(
        make_model("halving", task=MLModel.Task.REGRESSION), framework="sklearn",
        artifact="halving/v1.skops", checksum=checksum,
    )
    with pytest.raises(UntrustedArtifact, match=f"{__name__}.HalvingRegressor"):
        load_runtime(version, max_batch_size=8)


def test_a_type_trusted_in_settings_loads(model_store, settings):
    checksum = save_sklearn(HalvingRegressor().fit(ROWS, None), "halving/v1.skops")
    version = register_version(
        make_model("halving", task=MLModel.Task.REGRESSION), framework="sklearn",
        artifact="halving/v1.skops", checksum=checksum,
    )
    settings.PLATFORM_SKOPS_TRUSTED_TYPES = [f"{__name__}.HalvingRegressor"]
    runtime = load_runtime(version, max_batch_size=8)
    np.testing.assert_allclose(runtime.predict(ROWS), ROWS.sum(axis=1) / 2)


def test_a_keras_model_loads_in_safe_mode(model_store):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(shape=(2,)), keras.layers.Dense(1)])
    version = keras_version(model, "net/v1.keras")
    runtime = load_runtime(version, max_batch_size=4)
    np.testing.assert_allclose(runtime.predict(ROWS), model.predict(ROWS, verbose=0)[:, 0], rtol=1e-5, atol=1e-6)


def test_a_keras_model_with_a_lambda_layer_is_refused(model_store):
    import keras

    model = keras.Sequential([keras.Input(shape=(2,)), keras.layers.Lambda(lambda x: x * 2)])
    version = keras_version(model, "lambda/v1.keras", name="lambda")
    with pytest.raises(ArtifactError, match="Lambda"):
        load_runtime(version, max_batch_size=4)


def test_keras_artifacts_must_use_the_native_format(model_store):
    import keras

    model = keras.Sequential([keras.Input(shape=(2,)), keras.layers.Dense(1)])
    with pytest.raises(ArtifactError, match="must end in '.keras'"):
        save_keras(model, "net/v1.h5")


def test_an_unknown_framework_is_refused(sklearn_version):
    sklearn_version.framework = "pickle"
    with pytest.raises(ArtifactError, match="unknown framework 'pickle'"):
        load_runtime(sklearn_version, max_batch_size=8)


# -- versions ---------------------------------------------------------------------------


def test_versions_are_numbered_after_the_latest_and_the_newest_serves(model_store):
    mlmodel = make_model()
    versions = [
        register_version(mlmodel, framework="sklearn", artifact=f"tiny/v{n}.skops", checksum="0" * 64)
        for n in (1, 2, 3)
    ]
    assert [v.version for v in versions] == [1, 2, 3]
    assert list(mlmodel.versions.filter(is_active=True)) == [versions[-1]]
    assert mlmodel.active_version == versions[-1]


def test_registering_without_activating_keeps_the_serving_version(model_store):
    mlmodel = make_model()
    first = register_version(mlmodel, framework="sklearn", artifact="tiny/v1.skops", checksum="0" * 64)
    second = register_version(
        mlmodel, framework="sklearn", artifact="tiny/v2.skops", checksum="0" * 64, activate=False
    )
    assert second.version == 2 and not second.is_active
    assert mlmodel.active_version == first

    second.activate()
    assert mlmodel.active_version == second
    assert mlmodel.versions.filter(is_active=True).count() == 1


def test_version_numbers_are_per_model(model_store):
    one, other = make_model("one"), make_model("other")
    register_version(one, framework="sklearn", artifact="one/v1.skops", checksum="0" * 64)
    register_version(one, framework="sklearn", artifact="one/v2.skops", checksum="0" * 64)
    assert register_version(other, framework="sklearn", artifact="other/v1.skops", checksum="0" * 64).version == 1


def test_the_database_refuses_a_second_active_version(model_store):
    mlmodel = make_model()
    register_version(mlmodel, framework="sklearn", artifact="tiny/v1.skops", checksum="0" * 64)
    with pytest.raises(IntegrityError):
        ModelVersion.objects.create(
            model=mlmodel, version=2, framework="sklearn", artifact="tiny/v2.skops", checksum="0" * 64,
            is_active=True,
        )
