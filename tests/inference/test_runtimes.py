"""The scikit-learn and Keras runtimes give the framework's own answers, batch after batch."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.svm import LinearSVC

from inference.runtimes.keras import KerasRuntime, padded_sizes
from inference.runtimes.sklearn import SklearnRuntime

N_FEATURES = 4
MAX_BATCH_SIZE = 32


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, N_FEATURES))
    labels = np.array(["setosa", "versicolor", "virginica"])[np.argmax(x[:, :3], axis=1)]
    target = x @ np.array([1.5, -2.0, 0.5, 3.0]) + 0.25
    return x, labels, target


# -- scikit-learn ---------------------------------------------------------------------


def test_sklearn_classifier_gives_predict_proba(data):
    x, labels, _ = data
    estimator = LogisticRegression(max_iter=500).fit(x, labels)
    runtime = SklearnRuntime(estimator, task="classification", n_features=N_FEATURES, classes=None)
    runtime.warmup()

    rows = np.ascontiguousarray(x[:17])
    # Compiled to ONNX: the same arithmetic, equal to the last bits or nearly.
    assert runtime.engine == "onnxruntime"
    np.testing.assert_allclose(runtime.predict(rows), estimator.predict_proba(rows), rtol=1e-9, atol=1e-12)
    assert runtime.classes == ["setosa", "versicolor", "virginica"]
    assert runtime.device == "cpu"


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_sklearn_serves_exactly_when_compilation_is_off(data, task):
    x, labels, target = data
    if task == "classification":
        estimator, expected = LogisticRegression(max_iter=500).fit(x, labels), "predict_proba"
    else:
        estimator, expected = Ridge().fit(x, target), "predict"
    runtime = SklearnRuntime(estimator, task=task, n_features=N_FEATURES, classes=None, compile_onnx=False)

    rows = np.ascontiguousarray(x[:17])
    assert runtime.engine == "scikit-learn"
    assert "PLATFORM_SKLEARN_ONNX=0" in runtime.engine_reason
    np.testing.assert_array_equal(runtime.predict(rows), getattr(estimator, expected)(rows))


def test_sklearn_classifier_classes_are_strings(data):
    x, labels, _ = data
    numeric = np.searchsorted(["setosa", "versicolor", "virginica"], labels)
    estimator = LogisticRegression(max_iter=500).fit(x, numeric)
    runtime = SklearnRuntime(estimator, task="classification", n_features=N_FEATURES, classes=None)

    assert runtime.classes == ["0", "1", "2"]


def test_sklearn_classifier_keeps_the_registry_class_names(data):
    x, labels, _ = data
    estimator = LogisticRegression(max_iter=500).fit(x, labels)
    runtime = SklearnRuntime(estimator, task="classification", n_features=N_FEATURES, classes=["a", "b", "c"])

    assert runtime.classes == ["a", "b", "c"]


@pytest.mark.parametrize("estimator_class", [Ridge, LinearRegression])
def test_sklearn_regressor_gives_predict(data, estimator_class):
    x, _, target = data
    estimator = estimator_class().fit(x, target)
    runtime = SklearnRuntime(estimator, task="regression", n_features=N_FEATURES, classes=None)
    runtime.warmup()

    for n in (1, 3, 17, 120):
        rows = np.ascontiguousarray(x[:n])
        out = runtime.predict(rows)
        assert out.shape == (n,)
        np.testing.assert_allclose(out, estimator.predict(rows), rtol=1e-9, atol=1e-12)
    assert runtime.engine == "onnxruntime"
    assert runtime.classes is None


def test_sklearn_classifier_without_probabilities_is_refused(data):
    x, labels, _ = data
    estimator = LinearSVC().fit(x, labels)
    with pytest.raises(TypeError, match=r"^LinearSVC has no predict_proba; it cannot serve a classifier\.$"):
        SklearnRuntime(estimator, task="classification", n_features=N_FEATURES, classes=None)


# -- Keras ----------------------------------------------------------------------------


def test_padded_sizes_are_powers_of_two_up_to_the_largest_batch():
    assert padded_sizes(1) == [1]
    assert padded_sizes(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert padded_sizes(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert padded_sizes(3) == [1, 2, 3]


def build_keras_model(outputs: int, activation: str | None):
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input(shape=(N_FEATURES,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(outputs, activation=activation),
        ]
    )


@pytest.fixture(scope="module")
def keras_classifier():
    return build_keras_model(3, "softmax")


@pytest.fixture(scope="module")
def keras_regressor():
    return build_keras_model(1, None)


def framework_answer(model, rows: np.ndarray) -> np.ndarray:
    return np.asarray(model(rows.astype(np.float32), training=False))


@pytest.mark.parametrize("n", [1, 3, 17, MAX_BATCH_SIZE, MAX_BATCH_SIZE + 5, 3 * MAX_BATCH_SIZE])
def test_keras_classifier_gives_the_models_own_answers(data, keras_classifier, n):
    x, _, _ = data
    runtime = KerasRuntime(
        keras_classifier, task="classification", n_features=N_FEATURES, classes=["a", "b", "c"],
        max_batch_size=MAX_BATCH_SIZE,
    )
    rows = np.ascontiguousarray(x[:n])
    out = runtime.predict(rows)

    assert out.shape == (n, 3)
    # Padding and chunking may change the order of float32 sums inside a matmul.
    np.testing.assert_allclose(out, framework_answer(keras_classifier, rows), rtol=1e-5, atol=1e-6)
    assert runtime.classes == ["a", "b", "c"]


@pytest.mark.parametrize("n", [1, 3, 17, MAX_BATCH_SIZE + 5])
def test_keras_regressor_gives_one_value_per_row(data, keras_regressor, n):
    x, _, _ = data
    runtime = KerasRuntime(
        keras_regressor, task="regression", n_features=N_FEATURES, classes=None, max_batch_size=MAX_BATCH_SIZE
    )
    rows = np.ascontiguousarray(x[:n])
    out = runtime.predict(rows)

    assert out.shape == (n,)
    np.testing.assert_allclose(out, framework_answer(keras_regressor, rows)[:, 0], rtol=1e-5, atol=1e-6)


def test_keras_rows_do_not_leak_into_each_other(data, keras_classifier):
    x, _, _ = data
    runtime = KerasRuntime(
        keras_classifier, task="classification", n_features=N_FEATURES, classes=None, max_batch_size=MAX_BATCH_SIZE
    )
    alone = runtime.predict(np.ascontiguousarray(x[5:6]))
    together = runtime.predict(np.ascontiguousarray(x[:MAX_BATCH_SIZE + 5]))

    np.testing.assert_allclose(together[5:6], alone, rtol=1e-5, atol=1e-6)


def test_keras_runtime_never_retraces_after_warmup(data):
    model = build_keras_model(3, "softmax")
    runtime = KerasRuntime(
        model, task="classification", n_features=N_FEATURES, classes=None, max_batch_size=MAX_BATCH_SIZE
    )
    runtime.warmup()
    warm_traces = runtime.traces
    assert warm_traces == len(padded_sizes(MAX_BATCH_SIZE))

    rng = np.random.default_rng(1)
    for n in list(range(1, 2 * MAX_BATCH_SIZE + 3)) + [5 * MAX_BATCH_SIZE + 1]:
        out = runtime.predict(rng.normal(size=(n, N_FEATURES)))
        assert out.shape == (n, 3)

    assert runtime.traces == warm_traces
