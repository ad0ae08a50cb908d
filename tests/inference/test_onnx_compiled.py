"""Compiling scikit-learn estimators to ONNX: kept only for continuous models that answer the same."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_iris
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, Normalizer, StandardScaler

from inference.runtimes.onnx_compiled import compile_estimator, probe_rows
from inference.runtimes.sklearn import SklearnRuntime

IRIS_X, IRIS_Y = load_iris(return_X_y=True)
DIABETES_X, DIABETES_Y = load_diabetes(return_X_y=True)


def _runtime(estimator, task="classification", x=IRIS_X, **options):
    return SklearnRuntime(estimator, task=task, n_features=x.shape[1], classes=None, **options)


@pytest.mark.parametrize("estimator", [
    LogisticRegression(max_iter=1000),
    make_pipeline(StandardScaler(), PCA(3), LogisticRegression(max_iter=1000)),
], ids=["logistic", "scaler-pca-logistic"])
def test_a_continuous_classifier_is_compiled_and_answers_like_scikit_learn(estimator):
    estimator.fit(IRIS_X, IRIS_Y)
    runtime = _runtime(estimator)

    assert runtime.engine == "onnxruntime"
    for n in (1, 7, len(IRIS_X)):
        rows = np.ascontiguousarray(IRIS_X[:n])
        got = runtime.predict(rows)
        assert got.shape == (n, 3) and got.dtype == np.float64
        np.testing.assert_allclose(got, estimator.predict_proba(rows), rtol=1e-9, atol=1e-12)
        assert (got.argmax(axis=1) == estimator.predict(rows)).all()


@pytest.mark.parametrize("estimator", [LinearRegression(), MLPRegressor(max_iter=50, random_state=0)],
                         ids=["linear", "mlp"])
def test_a_regressor_answers_one_value_per_row(estimator):
    estimator.fit(DIABETES_X, DIABETES_Y)
    runtime = _runtime(estimator, task="regression", x=DIABETES_X)

    rows = np.ascontiguousarray(DIABETES_X[:5])
    assert runtime.engine == "onnxruntime"
    assert runtime.predict(rows).shape == (5,)
    np.testing.assert_allclose(runtime.predict(rows), estimator.predict(rows), rtol=1e-9, atol=1e-9)


def test_a_regressor_fitted_on_a_column_answers_a_column_as_scikit_learn_does():
    estimator = LinearRegression().fit(DIABETES_X, DIABETES_Y.reshape(-1, 1))
    runtime = _runtime(estimator, task="regression", x=DIABETES_X)

    rows = np.ascontiguousarray(DIABETES_X[:5])
    assert runtime.engine == "onnxruntime"
    assert runtime.predict(rows).shape == estimator.predict(rows).shape == (5, 1)
    np.testing.assert_allclose(runtime.predict(rows), estimator.predict(rows), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("estimator", "reason"), [
    # Thresholds and ties: probe rows cannot prove these equal.
    (RandomForestClassifier(n_estimators=5, random_state=0), "RandomForestClassifier is not among"),
    (KNeighborsClassifier(), "KNeighborsClassifier is not among"),
    (make_pipeline(FunctionTransformer(np.log1p), LogisticRegression(max_iter=1000)),
     "FunctionTransformer is not among"),
    # Converted, but the zero row divides by zero where scikit-learn keeps it zero.
    (make_pipeline(Normalizer(), LogisticRegression(max_iter=1000)), "differs from scikit-learn in"),
], ids=["forest", "neighbours", "custom-function", "normalizer"])
def test_whatever_cannot_be_shown_equal_stays_on_scikit_learn(estimator, reason):
    estimator.fit(IRIS_X, IRIS_Y)
    runtime = _runtime(estimator)

    assert runtime.engine == "scikit-learn"
    assert reason in runtime.engine_reason
    rows = np.ascontiguousarray(IRIS_X)
    np.testing.assert_array_equal(runtime.predict(rows), estimator.predict_proba(rows))


def test_rows_of_another_float_type_are_computed_in_double():
    estimator = LogisticRegression(max_iter=1000).fit(IRIS_X, IRIS_Y)
    runtime = _runtime(estimator)

    rows = np.ascontiguousarray(IRIS_X[:4], dtype=np.float32)
    np.testing.assert_allclose(runtime.predict(rows), estimator.predict_proba(rows.astype(np.float64)),
                               rtol=1e-9, atol=1e-12)


def test_a_subclass_from_elsewhere_is_not_taken_for_its_namesake():
    class LogisticRegression_(LogisticRegression):
        pass

    LogisticRegression_.__name__ = "LogisticRegression"
    estimator = LogisticRegression_(max_iter=1000).fit(IRIS_X, IRIS_Y)

    compiled = compile_estimator(estimator, estimator.predict_proba, task="classification", n_features=4)
    assert compiled.call is None
    assert "test_onnx_compiled" in compiled.reason


def test_a_compiled_graph_that_answers_differently_is_refused():
    estimator = LogisticRegression(max_iter=1000).fit(IRIS_X, IRIS_Y)

    def shifted(rows):  # a reference that disagrees in the sixth decimal
        return estimator.predict_proba(rows) + 1e-6

    compiled = compile_estimator(estimator, shifted, task="classification", n_features=4)
    assert compiled.call is None
    assert "differs from scikit-learn" in compiled.reason


def test_the_probe_includes_the_models_own_sample_rows():
    sample = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])
    rows = probe_rows(4, sample)

    assert rows.flags.c_contiguous and rows.dtype == np.float64
    assert (rows[0] == 0).all()
    np.testing.assert_array_equal(rows[-2:], sample)
    np.testing.assert_array_equal(probe_rows(4), probe_rows(4))  # a fixed draw: the same verdict every load
