"""How a model's raw output becomes the protocol's output rows."""

from __future__ import annotations

import numpy as np
import pytest

from inference.exceptions import ModelCallFailed
from inference.schema import InputSchema
from inference.served import ServedVersion
from streaming.replies import output_rows


def entry(task: str, outputs: str, classes: list[str] | None = None) -> ServedVersion:
    return ServedVersion(
        name="demo",
        version=3,
        task=task,
        schema=InputSchema(["a", "b"]),
        outputs=outputs,
        classes=classes,
    )


def test_a_classifier_answers_the_likeliest_label_and_every_probability():
    classifier = entry("classification", "species", ["setosa", "versicolor", "virginica"])
    probabilities = np.array([[0.7, 0.2, 0.1], [0.05, 0.15, 0.8], [0.1, 0.6, 0.3]])

    assert output_rows(classifier, probabilities) == [
        {"label": "setosa", "probabilities": {"setosa": 0.7, "versicolor": 0.2, "virginica": 0.1}},
        {"label": "virginica", "probabilities": {"setosa": 0.05, "versicolor": 0.15, "virginica": 0.8}},
        {"label": "versicolor", "probabilities": {"setosa": 0.1, "versicolor": 0.6, "virginica": 0.3}},
    ]


def test_a_classifier_gives_plain_floats_a_json_encoder_accepts():
    classifier = entry("classification", "digit", ["0", "1"])
    (row,) = output_rows(classifier, np.array([[0.25, 0.75]], dtype=np.float32))

    assert row["label"] == "1"
    assert all(type(p) is float for p in row["probabilities"].values())
    assert row["probabilities"] == {"0": 0.25, "1": 0.75}


def test_a_regressor_answers_one_value_per_row():
    regressor = entry("regression", "price")
    rows = output_rows(regressor, np.array([1.5, -2.25, 0.0]))

    assert rows == [{"value": 1.5}, {"value": -2.25}, {"value": 0.0}]
    assert all(type(row["value"]) is float for row in rows)


def test_a_multi_output_regressor_answers_a_list_per_row():
    regressor = entry("regression", "position")
    rows = output_rows(regressor, np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))

    assert rows == [{"value": [1.0, 2.0, 3.0]}, {"value": [4.0, 5.0, 6.0]}]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(
    ("task", "classes", "outputs"),
    [
        ("classification", ["x", "y"], np.array([[0.5, 0.5], [0.5, 0.5]])),
        ("regression", None, np.array([1.0, 2.0])),
        ("regression", None, np.array([[1.0, 2.0], [3.0, 4.0]])),
    ],
    ids=["classifier", "regressor", "multi-output"],
)
def test_a_non_finite_output_fails_the_request(task, classes, outputs, bad):
    model = entry(task, "out", classes)
    outputs = outputs.astype(np.float32).copy()
    outputs.flat[-1] = bad

    with pytest.raises(ModelCallFailed) as excinfo:
        output_rows(model, outputs)
    assert str(excinfo.value) == "The model demo produced a value that is not a finite number."
    assert excinfo.value.code == "internal"


def test_classifier_whose_columns_do_not_match_its_classes_is_refused():
    from inference.exceptions import ArtifactError
    from inference.service import InferenceService

    class WrongWidth:
        device = "cpu"
        task = "classification"
        n_features = 2
        classes = ["a", "b", "c"]
        holds_gil = False
        engine = "test"

        def predict(self, batch):
            return np.full((batch.shape[0], 2), 0.5)

        def warmup(self):
            pass

    entry = ServedVersion("wrong", 1, "classification", InputSchema(["x", "y"]), "label")
    with pytest.raises(ArtifactError, match="3 class labels, but its model returns 2 probability columns"):
        InferenceService().attach(entry, WrongWidth(), max_batch_size=4, max_delay_ms=0, queue_capacity=4)
    assert entry.batcher is None
