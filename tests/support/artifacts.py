"""Model artifacts for the deployment tests: good ones, and each kind of bad one a pipeline might upload.

Everything is small and trained in milliseconds on made-up data, so the
tests check the rules rather than the models.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import joblib
import numpy as np
import skops.io
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.linear_model import LinearRegression, LogisticRegression

FEATURES = ["a", "b", "c"]
CLASSES = ["high", "low", "mid"]
SAMPLE_ROWS = [[0.1, 0.2, 0.3], [1.0, 0.5, 0.0]]


def rows(n_features: int = len(FEATURES), n: int = 30) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, n_features))


def classifier(n_features: int = len(FEATURES)) -> LogisticRegression:
    """A three-class classifier with labels ``CLASSES``."""
    x = rows(n_features)
    labels = np.asarray(CLASSES)[np.arange(len(x)) % 3]
    return LogisticRegression(max_iter=200).fit(x, labels)


def regressor(n_features: int = len(FEATURES)) -> LinearRegression:
    x = rows(n_features)
    return LinearRegression().fit(x, x.sum(axis=1))


class HalvingRegressor(RegressorMixin, BaseEstimator):
    """An estimator skops does not know: loading it would import and run this module's code."""

    def fit(self, X, y):
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X):
        return np.asarray(X).sum(axis=1) / 2


def skops_file(path: Path, estimator=None) -> Path:
    skops.io.dump(estimator if estimator is not None else classifier(), path)
    return path


def pickle_posing_as_skops(path: Path) -> Path:
    path.write_bytes(pickle.dumps(classifier()))
    return path


def joblib_posing_as_skops(path: Path, *, compress: int = 0) -> Path:
    joblib.dump(classifier(), path, compress=compress)
    return path


def untrusted_skops(path: Path) -> Path:
    return skops_file(path, HalvingRegressor().fit(rows(), rows()[:, 0]))


def truncated(path: Path, source: Path) -> Path:
    """The first half of ``source``: an upload cut off midway."""
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    return keras


def keras_file(path: Path, *, n_features: int = len(FEATURES), n_outputs: int = len(CLASSES),
               lambda_layer: bool = False, activation: str = "softmax") -> Path:
    """A tiny untrained Keras network; with ``lambda_layer`` it holds a Lambda (Python code)."""
    keras = _keras()
    layers = [keras.Input(shape=(n_features,))]
    if lambda_layer:
        layers.append(keras.layers.Lambda(lambda x: x * 2.0, name="doubler"))
    layers.append(keras.layers.Dense(n_outputs, activation=activation))
    keras.Sequential(layers).save(path)
    return path
