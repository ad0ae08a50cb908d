"""The demo models and ``manage.py load_demo_models``: what it registers, idempotence, faithful artifacts."""

import io
import sqlite3

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from inference.artifacts import artifact_path, load_runtime
from inference.demo import DEMO_MODELS
from inference.models import MLModel, ModelVersion
from tests.support.services import manage

EXPECTED = {
    # name: (task, framework, feature count, classes)
    "iris": ("classification", "sklearn", 4, ["setosa", "versicolor", "virginica"]),
    "breast-cancer": ("classification", "sklearn", 30, ["benign", "malignant"]),
    "diabetes": ("regression", "sklearn", 10, None),
    "digits": ("classification", "keras", 64, [str(d) for d in range(10)]),
}


@pytest.fixture
def trained_once(monkeypatch, trained_demo_model):
    """Make the command reuse models trained once per session instead of training them again."""
    for name in DEMO_MODELS:
        monkeypatch.setitem(DEMO_MODELS, name, lambda name=name: trained_demo_model(name))


def load_demo_models(*args, **options):
    stdout, stderr = io.StringIO(), io.StringIO()
    call_command("load_demo_models", *args, stdout=stdout, stderr=stderr, **options)
    return stdout.getvalue(), stderr.getvalue()


def registry_state():
    return sorted(
        ModelVersion.objects.values_list("model__name", "version", "artifact", "checksum", "is_active")
    )


def expected_output(trained, rows):
    """What the estimator computed before it was saved: probabilities, values or Keras outputs."""
    if trained.framework == "keras":
        return trained.estimator.predict(rows, verbose=0)
    if trained.task == "classification":
        return trained.estimator.predict_proba(rows)
    return trained.estimator.predict(rows)


@pytest.mark.django_db
class TestLoadDemoModels:
    @pytest.fixture(autouse=True)
    def _store(self, model_store, trained_once):
        self.store = model_store

    def test_registers_the_four_demo_models(self):
        load_demo_models()

        registered = {
            m.name: (m.task, m.active_version.framework, len(m.inputs), m.active_version.metadata["classes"])
            for m in MLModel.objects.all()
        }
        assert registered == EXPECTED
        for version in ModelVersion.objects.all():
            assert version.version == 1 and version.is_active
            assert version.status == ModelVersion.Status.ACTIVE
            assert artifact_path(version.artifact).is_file()

    def test_a_second_run_changes_nothing(self):
        load_demo_models()
        before = registry_state()
        files = {path: path.read_bytes() for path in self.store.rglob("*") if path.is_file()}

        stdout, _ = load_demo_models()

        assert registry_state() == before
        assert MLModel.objects.count() == 4
        assert {path: path.read_bytes() for path in self.store.rglob("*") if path.is_file()} == files
        for name in EXPECTED:
            assert f"{name}: v1 already registered and intact." in stdout

    @pytest.mark.parametrize("name", sorted(EXPECTED))
    def test_artifacts_predict_what_the_trained_model_predicted(self, name, trained_demo_model):
        load_demo_models(name)
        trained = trained_demo_model(name)
        version = MLModel.objects.get(name=name).active_version

        runtime = load_runtime(version, max_batch_size=16)

        assert runtime.classes == trained.classes
        np.testing.assert_allclose(
            runtime.predict(trained.sample), expected_output(trained, trained.sample), rtol=1e-5, atol=1e-6
        )

    def test_force_registers_a_second_version_that_serves(self):
        load_demo_models()
        load_demo_models(force=True)

        for mlmodel in MLModel.objects.all():
            assert sorted(mlmodel.versions.values_list("version", "is_active")) == [(1, False), (2, True)]
            assert artifact_path(mlmodel.active_version.artifact).is_file()

    def test_a_tampered_artifact_is_replaced_by_a_new_version(self):
        load_demo_models("iris")
        first = MLModel.objects.get(name="iris").active_version
        with open(artifact_path(first.artifact), "ab") as handle:
            handle.write(b"tampered")

        _, stderr = load_demo_models("iris")

        assert "refusing to load a file that changed" in stderr
        assert MLModel.objects.get(name="iris").active_version.version == 2

    def test_only_the_named_models(self):
        load_demo_models("iris", "diabetes")
        assert sorted(MLModel.objects.values_list("name", flat=True)) == ["diabetes", "iris"]

    def test_an_unknown_name_is_refused(self):
        with pytest.raises(CommandError, match="Unknown demo model"):
            load_demo_models("iris", "mnist")
        assert not MLModel.objects.exists()


# -- the command in its own process, on a real data directory ----------------------------------


def test_a_fresh_process_finds_the_trained_models_intact(demo_data, tmp_path):
    data_dir = tmp_path / "data"
    demo_data.copy_to(data_dir)
    env = {**demo_data.env, "PLATFORM_DATA_DIR": str(data_dir)}

    def rows():
        with sqlite3.connect(data_dir / "platform.sqlite3") as connection:
            return sorted(connection.execute(
                "SELECT m.name, m.task, v.version, v.framework, v.checksum, v.is_active "
                "FROM inference_modelversion v JOIN inference_mlmodel m ON m.id = v.model_id"
            ))

    before = rows()
    result = manage("load_demo_models", env=env)

    assert [(name, task, version, framework) for name, task, version, framework, *_ in before] == sorted(
        (name, task, 1, framework) for name, (task, framework, *_) in EXPECTED.items()
    )
    assert rows() == before
    assert "training" not in result.stdout
    assert result.stdout.count("already registered and intact") == 4

