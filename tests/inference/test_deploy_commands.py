"""register_model, activate_version and retire_version: what they print, and failing with the reason."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command

from inference.models import DeploymentEvent, ModelVersion
from tests.support import artifacts
from tests.support.commands import manage, platform_env

pytestmark = pytest.mark.django_db

NEW_MODEL = ["--task", "classification", "--inputs", "a,b,c", "--outputs", "label"]


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.fixture
def good(tmp_path, model_store):
    return str(artifacts.skops_file(tmp_path / "good.skops"))


@pytest.fixture
def two_versions(good):
    """``shop`` v1 then v2 activated: v2 serves."""
    run("register_model", "shop", "--artifact", good, "--framework", "sklearn", "--activate", *NEW_MODEL)
    run("register_model", "shop", "--artifact", good, "--framework", "sklearn", "--activate")


def states():
    return {v.version: v.status for v in ModelVersion.objects.filter(model__name="shop")}


def test_register_model_creates_the_model_and_says_what_it_registered(good):
    out = run("register_model", "shop", "--artifact", good, "--framework", "sklearn", *NEW_MODEL,
              "--sample-inputs", json.dumps(artifacts.SAMPLE_ROWS), "--actor", "ci-pipeline")
    assert "Created model shop (classification, 3 inputs)." in out
    assert "shop: registered v1 (sklearn," in out and "staged; serve it with `manage.py activate_version shop 1`" in out
    event = DeploymentEvent.objects.get()
    assert (event.action, event.actor, event.source) == ("registered", "ci-pipeline", "command")
    assert event.address  # the machine the command ran on


def test_register_model_with_activate_serves_it(good):
    out = run("register_model", "shop", "--artifact", good, "--framework", "sklearn", "--activate", *NEW_MODEL)
    assert "now active" in out and states() == {1: "active"}


def test_register_model_fails_with_the_reason_and_records_the_failed_version(two_versions, tmp_path):
    bad = artifacts.pickle_posing_as_skops(tmp_path / "bad.skops")
    with pytest.raises(CommandError, match="shop v3 failed validation: The artifact is a pickle or joblib file"):
        run("register_model", "shop", "--artifact", str(bad), "--framework", "sklearn", "--activate")
    assert states() == {1: "staged", 2: "active", 3: "failed"}


def test_a_new_model_needs_its_whole_schema(good):
    with pytest.raises(CommandError, match="needs all of --task, --inputs and --outputs"):
        run("register_model", "shop", "--artifact", good, "--framework", "sklearn", "--task", "regression")
    with pytest.raises(CommandError, match="no model named 'shop'; to create it"):
        run("register_model", "shop", "--artifact", good, "--framework", "sklearn")


def test_activate_version_and_rollback_say_what_changed(two_versions):
    assert run("activate_version", "shop", "1") == "shop: activated v1 (was v2).\n"
    assert run("activate_version", "shop", "1") == "shop: v1 was already active; nothing changed.\n"
    assert run("activate_version", "shop", "--rollback") == "shop: rolled back to v2 (was v1).\n"
    assert states() == {1: "staged", 2: "active"}


def test_activate_version_needs_a_version_or_rollback(two_versions):
    with pytest.raises(CommandError, match="either a VERSION to activate or --rollback"):
        run("activate_version", "shop")
    with pytest.raises(CommandError, match="shop has no version 7"):
        run("activate_version", "shop", "7")


def test_retire_version_refuses_the_active_one_without_a_replacement(two_versions):
    with pytest.raises(CommandError, match="v2 is the active version of shop: name the version that replaces it"):
        run("retire_version", "shop", "2")
    assert run("retire_version", "shop", "2", "--replacement", "1") == "shop: retired v2; v1 serves.\n"
    assert states() == {1: "active", 2: "retired"}


def test_the_commands_exit_non_zero_with_the_reason_in_a_real_process(tmp_path):
    env = platform_env(tmp_path / "data")
    manage("migrate", "--no-input", env=env)
    bad = artifacts.untrusted_skops(tmp_path / "bad.skops")
    good = artifacts.skops_file(tmp_path / "good.skops")

    refused = manage("register_model", "shop", "--artifact", str(bad), "--framework", "sklearn", *NEW_MODEL,
                     env=env, check=False)
    assert refused.returncode == 1
    assert "types outside the trusted list: tests.support.artifacts.HalvingRegressor" in refused.stderr
    assert "Traceback" not in refused.stderr

    accepted = manage("register_model", "shop", "--artifact", str(good), "--framework", "sklearn", "--activate",
                      env=env, check=False)
    assert accepted.returncode == 0, accepted.stderr
    assert "shop: registered v2 (sklearn" in accepted.stdout and "now active" in accepted.stdout
