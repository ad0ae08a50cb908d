"""Model lifecycle: register, activate, roll back, retire; every bad artifact fails without touching what serves."""

from __future__ import annotations

import pytest

from inference import deployment
from inference.artifacts import artifact_path, sha256_file
from inference.deployment import ModelSchema
from inference.exceptions import (
    ArtifactChecksumMismatch,
    DeploymentConflict,
    InvalidDeployment,
    UnknownModel,
    VersionFailed,
)
from inference.models import DeploymentEvent, MLModel, ModelVersion
from inference.signals import catalog_changed
from tests.support import artifacts

pytestmark = pytest.mark.django_db

SCHEMA = ModelSchema(task="classification", inputs=artifacts.FEATURES, outputs="label and probabilities")
WHO = {"actor": "alice", "source": "api", "address": "10.1.2.3"}


@pytest.fixture
def announced():
    """What ``catalog_changed`` said, in order."""
    sent: list[dict] = []

    def receive(sender, **kwargs):
        sent.append({name: kwargs[name] for name in ("model", "action", "version")})

    catalog_changed.connect(receive)
    yield sent
    catalog_changed.disconnect(receive)


@pytest.fixture
def good(tmp_path):
    return artifacts.skops_file(tmp_path / "good.skops")


@pytest.fixture
def serving(model_store, good, django_capture_on_commit_callbacks):
    """``shop`` with v1 registered and active."""
    with django_capture_on_commit_callbacks(execute=True):
        return deployment.register("shop", good, "sklearn", schema=SCHEMA, activate=True, **WHO)


def events(model="shop"):
    return [(e.version_number, e.action) for e in DeploymentEvent.objects.filter(model__name=model).order_by("id")]


def statuses(model="shop"):
    return {v.version: (v.status, v.is_active) for v in ModelVersion.objects.filter(model__name=model)}


# -- registering ------------------------------------------------------------------------------------


def test_a_new_model_is_created_with_its_schema_and_its_first_version_staged(
    model_store, good, announced, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        version = deployment.register("shop", good, "sklearn", schema=SCHEMA, **WHO)

    model = MLModel.objects.get(name="shop")
    assert (model.task, model.inputs, model.outputs) == ("classification", artifacts.FEATURES, SCHEMA.outputs)
    assert (version.version, version.status, version.is_active) == (1, "staged", False)
    checksum = sha256_file(good)
    assert version.artifact == f"shop/{checksum}.skops" and version.checksum == checksum
    assert artifact_path(version.artifact).read_bytes() == good.read_bytes()
    assert version.size_bytes == good.stat().st_size and version.created_by == "alice"
    assert version.metadata["classes"] == artifacts.CLASSES and version.metadata["filename"] == "good.skops"
    event = DeploymentEvent.objects.get()
    assert (event.action, event.actor, event.source, event.address) == ("registered", "alice", "api", "10.1.2.3")
    assert "model created" in event.detail and checksum in event.detail
    assert announced == [{"model": "shop", "action": "registered", "version": 1}]


def test_registering_with_activate_serves_it(serving):
    assert statuses() == {1: ("active", True)}
    assert events() == [(1, "registered"), (1, "activated")]


def test_signals_wait_for_the_commit(model_store, good, announced, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        deployment.register("shop", good, "sklearn", schema=SCHEMA, **WHO)
    assert announced == [] and len(callbacks) == 1


def test_a_new_version_activated_replaces_the_active_one_which_stays_staged(serving, good, announced,
                                                                           django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        deployment.register("shop", good, "sklearn", activate=True, actor="bob", source="command")
    assert statuses() == {1: ("staged", False), 2: ("active", True)}
    assert DeploymentEvent.objects.get(version_number=2, action="activated").detail == "replaces v1"
    assert [a["action"] for a in announced] == ["registered", "activated"]


def test_a_new_model_needs_its_schema_and_nothing_is_created_without_it(model_store, good):
    with pytest.raises(InvalidDeployment, match="give its task, inputs and outputs"):
        deployment.register("shop", good, "sklearn", **WHO)
    assert not MLModel.objects.exists()


def test_a_schema_that_contradicts_the_existing_model_is_refused(serving, good):
    other = ModelSchema(task="classification", inputs=["x", "y", "z"], outputs="label")
    with pytest.raises(InvalidDeployment, match="already exists .* differ"):
        deployment.register("shop", good, "sklearn", schema=other, **WHO)
    assert statuses() == {1: ("active", True)}


def test_a_keras_version_reuses_the_labels_of_the_version_before(model_store, tmp_path):
    net = artifacts.keras_file(tmp_path / "net.keras")
    deployment.register("net", net, "keras", schema=SCHEMA, classes=artifacts.CLASSES, **WHO)
    second = deployment.register("net", net, "keras", **WHO)
    assert second.status == "staged" and second.metadata["classes"] == artifacts.CLASSES


# -- every bad artifact ends as a failed version and nothing that serves changes ---------------------


def _too_large(tmp_path, settings):
    path = artifacts.skops_file(tmp_path / "big.skops")
    settings.PLATFORM_MAX_ARTIFACT_BYTES = path.stat().st_size - 1
    return path, "sklearn", None


BAD_ARTIFACTS = {
    "pickle posing as skops": (
        lambda tmp, s: (artifacts.pickle_posing_as_skops(tmp / "m.skops"), "sklearn", None), "pickle or joblib"),
    "joblib posing as skops": (
        lambda tmp, s: (artifacts.joblib_posing_as_skops(tmp / "m.skops"), "sklearn", None), "pickle or joblib"),
    "skops with an untrusted type": (
        lambda tmp, s: (artifacts.untrusted_skops(tmp / "m.skops"), "sklearn", None), "outside the trusted list"),
    "keras with a Lambda layer": (
        lambda tmp, s: (artifacts.keras_file(tmp / "n.keras", lambda_layer=True), "keras", artifacts.CLASSES),
        "Lambda layer"),
    "wrong number of inputs": (
        lambda tmp, s: (artifacts.skops_file(tmp / "m.skops", artifacts.classifier(4)), "sklearn", None),
        "takes 4 input features, but shop declares 3"),
    "classes not matching the outputs": (
        lambda tmp, s: (artifacts.keras_file(tmp / "n.keras", n_outputs=2), "keras", artifacts.CLASSES),
        "3 class labels (high, low, mid) but returns 2 probability columns"),
    "over the size limit": (_too_large, "larger than the limit"),
    "truncated": (
        lambda tmp, s: (artifacts.truncated(tmp / "t.skops", artifacts.skops_file(tmp / "w.skops")), "sklearn", None),
        "truncated or corrupt"),
}


@pytest.mark.parametrize("case", BAD_ARTIFACTS, ids=list(BAD_ARTIFACTS))
def test_a_bad_artifact_ends_as_a_failed_version_with_its_reason_and_serving_unchanged(
    serving, tmp_path, settings, announced, django_capture_on_commit_callbacks, model_store, case
):
    make, reason = BAD_ARTIFACTS[case]
    path, framework, classes = make(tmp_path, settings)
    stored_before = sorted(p for p in model_store.rglob("*") if p.is_file())

    with django_capture_on_commit_callbacks(execute=True), pytest.raises(VersionFailed) as caught:
        deployment.register("shop", path, framework, classes=classes, activate=True, **WHO)

    assert reason in str(caught.value) and caught.value.version == 2
    failed = ModelVersion.objects.get(model__name="shop", version=2)
    assert failed.status == "failed" and not failed.is_active
    assert reason in failed.failure_reason and failed.created_by == "alice"
    assert statuses() == {1: ("active", True), 2: ("failed", False)}
    assert events()[-1] == (2, "failed")
    assert announced == [{"model": "shop", "action": "failed", "version": 2}]
    assert sorted(p for p in model_store.rglob("*") if p.is_file()) == stored_before


def test_a_file_whose_bytes_changed_after_upload_fails_at_activation(serving, tmp_path):
    other = artifacts.skops_file(tmp_path / "other.skops", artifacts.classifier())
    staged = deployment.register("shop", other, "sklearn", **WHO)
    assert staged.artifact != serving.artifact
    with open(artifact_path(staged.artifact), "ab") as handle:
        handle.write(b"tampered")

    with pytest.raises(VersionFailed, match="changed after registration") as caught:
        deployment.activate("shop", 2, **WHO)

    assert isinstance(caught.value.reason, ArtifactChecksumMismatch)
    staged.refresh_from_db()
    assert staged.status == "failed" and "changed after registration" in staged.failure_reason
    assert statuses()[1] == ("active", True)
    assert events()[-1] == (2, "failed")


def test_a_failed_version_cannot_be_activated_and_says_why(serving, tmp_path):
    with pytest.raises(VersionFailed):
        deployment.register("shop", artifacts.pickle_posing_as_skops(tmp_path / "p.skops"), "sklearn", **WHO)
    with pytest.raises(DeploymentConflict, match="failed validation and cannot serve: The artifact is a pickle"):
        deployment.activate("shop", 2, **WHO)


# -- activating, rolling back, retiring --------------------------------------------------------------


@pytest.fixture
def three_versions(serving, good):
    """v1, v2, v3 each activated in turn: v3 serves."""
    for _ in range(2):
        deployment.register("shop", good, "sklearn", activate=True, **WHO)
    assert statuses() == {1: ("staged", False), 2: ("staged", False), 3: ("active", True)}


def test_activating_the_active_version_changes_nothing(serving):
    before = events()
    assert deployment.activate("shop", 1, **WHO).is_active
    assert events() == before


def test_rollback_activates_the_version_that_served_before(three_versions):
    assert deployment.rollback("shop", actor="carol", source="admin", address="192.0.2.7").version == 2
    assert statuses() == {1: ("staged", False), 2: ("active", True), 3: ("staged", False)}
    event = DeploymentEvent.objects.order_by("id").last()
    assert (event.version_number, event.action, event.actor, event.source, event.address, event.detail) == (
        2, "rolled_back", "carol", "admin", "192.0.2.7", "rolled back from v3")
    # A second roll-back undoes the first.
    assert deployment.rollback("shop", **WHO).version == 3


def test_rollback_skips_versions_retired_since(three_versions):
    deployment.retire("shop", 2, **WHO)
    assert deployment.rollback("shop", **WHO).version == 1


def test_rollback_reaches_a_version_activated_before_the_audit_existed(model_store, good):
    legacy = deployment.register("shop", good, "sklearn", schema=SCHEMA, **WHO)
    legacy.activate()  # as the demo loader and the migration from "ready" did, without an event
    deployment.register("shop", good, "sklearn", activate=True, **WHO)
    assert deployment.rollback("shop", **WHO).version == 1


def test_rollback_without_an_earlier_active_version_is_refused(serving):
    with pytest.raises(DeploymentConflict, match="no earlier active version .* activate a version by its number"):
        deployment.rollback("shop", **WHO)
    assert statuses() == {1: ("active", True)}


def test_a_staged_version_is_retired(three_versions, announced, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        deployment.retire("shop", 1, **WHO)
    assert statuses()[1] == ("retired", False)
    assert events()[-1] == (1, "retired") and announced[-1]["action"] == "retired"
    with pytest.raises(DeploymentConflict, match="already retired"):
        deployment.retire("shop", 1, **WHO)
    with pytest.raises(DeploymentConflict, match="retired for good"):
        deployment.activate("shop", 1, **WHO)


def test_the_active_version_is_retired_only_with_a_replacement(three_versions):
    with pytest.raises(DeploymentConflict, match="is the active version of shop: name the version that replaces it"):
        deployment.retire("shop", 3, **WHO)
    assert statuses()[3] == ("active", True)

    deployment.retire("shop", 3, replacement=1, **WHO)
    assert statuses() == {1: ("active", True), 2: ("staged", False), 3: ("retired", False)}
    assert events()[-2:] == [(1, "activated"), (3, "retired")]
    assert DeploymentEvent.objects.get(version_number=3, action="retired").detail == "replaced by v1"


def test_unknown_models_and_versions_are_named(serving):
    with pytest.raises(UnknownModel, match="no model named 'nope'"):
        deployment.activate("nope", 1, **WHO)
    with pytest.raises(UnknownModel, match="shop has no version 9"):
        deployment.retire("shop", 9, **WHO)


def test_mark_failed_takes_a_version_out_of_service_with_its_reason(serving):
    error = ArtifactChecksumMismatch("The file changed after registration.")
    version = deployment.mark_failed("shop", 1, error, actor="server", source="command")
    assert (version.status, version.is_active, version.failure_reason) == ("failed", False, str(error))


def test_every_change_needs_a_known_source_and_an_actor(serving):
    with pytest.raises(ValueError, match="source must be one of admin, command, api"):
        deployment.activate("shop", 1, actor="x", source="cron")
    with pytest.raises(ValueError, match="needs an actor"):
        deployment.activate("shop", 1, actor="", source="api")
