"""Demo models, trained from data sets that ship inside scikit-learn (nothing is downloaded)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

RANDOM_STATE = 0


@dataclass(frozen=True)
class TrainedModel:
    estimator: Any
    framework: str
    task: str
    inputs: list[str]
    outputs: str
    description: str
    classes: list[str] | None
    sample: np.ndarray


def _feature_name(name: str) -> str:
    return name.replace(" (cm)", "").replace(" ", "_")


def train_iris() -> TrainedModel:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    data = load_iris()
    y = np.asarray(data.target_names)[data.target]
    estimator = LogisticRegression(max_iter=1000, random_state=RANDOM_STATE).fit(data.data, y)
    return TrainedModel(
        estimator=estimator,
        framework="sklearn",
        task="classification",
        inputs=[_feature_name(n) for n in data.feature_names],
        outputs="label and probabilities over setosa, versicolor, virginica",
        description="Logistic regression on the iris flowers (scikit-learn).",
        classes=[str(c) for c in estimator.classes_],
        sample=data.data[:8],
    )


def train_breast_cancer() -> TrainedModel:
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_breast_cancer()
    y = np.asarray(data.target_names)[data.target]
    estimator = make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=2000, random_state=RANDOM_STATE)
    ).fit(data.data, y)
    return TrainedModel(
        estimator=estimator,
        framework="sklearn",
        task="classification",
        inputs=[_feature_name(n) for n in data.feature_names],
        outputs="label and probabilities over malignant, benign",
        description="Standard scaler and logistic regression pipeline on the Wisconsin breast cancer data.",
        classes=[str(c) for c in estimator.classes_],
        sample=data.data[:8],
    )


def train_diabetes() -> TrainedModel:
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    data = load_diabetes()
    estimator = Ridge(alpha=0.1).fit(data.data, data.target)
    return TrainedModel(
        estimator=estimator,
        framework="sklearn",
        task="regression",
        inputs=list(data.feature_names),
        outputs="value: disease progression one year after baseline",
        description="Ridge regression on the diabetes progression data (scikit-learn).",
        classes=None,
        sample=data.data[:8],
    )


def train_digits() -> TrainedModel:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    from sklearn.datasets import load_digits

    data = load_digits()
    keras.utils.set_random_seed(RANDOM_STATE)
    model = keras.Sequential(
        [
            keras.Input(shape=(64,), name="pixels"),
            keras.layers.Rescaling(1.0 / 16.0),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="digits_mlp",
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(data.data.astype("float32"), data.target, epochs=30, batch_size=64, verbose=0)
    return TrainedModel(
        estimator=model,
        framework="keras",
        task="classification",
        inputs=[f"pixel_{i // 8}_{i % 8}" for i in range(64)],
        outputs="label (digit 0-9) and probabilities over the ten digits",
        description="Keras multi-layer perceptron on the 8x8 handwritten digits (TensorFlow).",
        classes=[str(d) for d in range(10)],
        sample=data.data[:8].astype("float32"),
    )


DEMO_MODELS: dict[str, Callable[[], TrainedModel]] = {
    "iris": train_iris,
    "breast-cancer": train_breast_cancer,
    "diabetes": train_diabetes,
    "digits": train_digits,
}
