"""The admin's deployment: upload on the model's page, the buttons, the add page, the audit; staff users only."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.urls import reverse

from inference import deployment
from inference.models import DeploymentEvent, MLModel, ModelVersion
from tests.support import artifacts

pytestmark = pytest.mark.django_db

SCHEMA = deployment.ModelSchema(task="classification", inputs=artifacts.FEATURES, outputs="label")
WHO = {"actor": "setup", "source": "command"}


@pytest.fixture
def good(model_store, tmp_path):
    return artifacts.skops_file(tmp_path / "good.skops")


@pytest.fixture
def shop(good):
    """``shop`` with v1 active and v2 staged."""
    deployment.register("shop", good, "sklearn", schema=SCHEMA, activate=True, **WHO)
    deployment.register("shop", good, "sklearn", **WHO)
    return MLModel.objects.get(name="shop")


def url(name, *args):
    return reverse(f"admin:inference_mlmodel_{name}", args=args)


def said(response):
    """The message the admin showed for this request (messages of earlier ones, not yet shown, come first)."""
    return str(list(get_messages(response.wsgi_request))[-1])


def states():
    return {v.version: v.status for v in ModelVersion.objects.filter(model__name="shop")}


def last_event():
    return DeploymentEvent.objects.order_by("id").last()


def test_the_model_page_shows_each_version_its_reason_and_its_buttons(admin_client, shop, tmp_path):
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do: it records a failed v3
        deployment.register("shop", artifacts.pickle_posing_as_skops(tmp_path / "p.skops"), "sklearn", **WHO)
    page = admin_client.get(url("change", shop.pk)).content.decode()
    assert "Deployment" in page
    assert f'action="{url("activate", shop.pk, 2)}"' in page and "Activate v2" in page
    assert "Activate v1" not in page and "Activate v3" not in page  # active, and failed
    assert "Retire v2" in page and "Retire v3" in page
    assert '<select name="replacement">' in page and "Roll back to" not in page
    assert "The artifact is a pickle or joblib file" in page
    assert f'action="{url("upload", shop.pk)}"' in page and 'enctype="multipart/form-data"' in page
    # The audit, inline.
    assert "deployment events" in page.lower() and "registered" in page


def test_a_models_schema_is_read_only_once_it_has_versions(admin_client, shop):
    form = admin_client.get(url("change", shop.pk)).context["adminform"].form
    assert "inputs" not in form.fields and "task" not in form.fields and "outputs" in form.fields


def test_uploading_on_the_model_page_registers_and_activates(admin_client, admin_user, shop, good):
    with open(good, "rb") as handle:
        response = admin_client.post(url("upload", shop.pk), {"artifact": handle, "framework": "sklearn",
                                                              "activate": "on"})
    assert response.status_code == 302 and response["Location"] == url("change", shop.pk)
    assert said(response) == "shop v3 passed validation and is registered and activated."
    assert states() == {1: "staged", 2: "staged", 3: "active"}
    event = last_event()
    assert (event.action, event.actor, event.source, event.address) == (
        "activated", admin_user.username, "admin", "127.0.0.1")


def test_a_refused_upload_says_why_and_is_recorded_failed(admin_client, shop, tmp_path):
    bad = artifacts.keras_file(tmp_path / "net.keras", lambda_layer=True)
    with open(bad, "rb") as handle:
        response = admin_client.post(url("upload", shop.pk), {"artifact": handle, "framework": "keras",
                                                              "classes": "high,low,mid", "activate": "on"})
    assert response.status_code == 302
    assert said(response).startswith("shop v3 failed validation: The Keras model contains a Lambda layer")
    assert states() == {1: "active", 2: "staged", 3: "failed"}


def test_an_incomplete_upload_form_registers_nothing(admin_client, shop):
    response = admin_client.post(url("upload", shop.pk), {"framework": "sklearn"})
    assert "The upload was not registered: artifact:" in said(response)
    assert states() == {1: "active", 2: "staged"}


def test_the_buttons_activate_roll_back_and_retire(admin_client, admin_user, shop):
    response = admin_client.post(url("activate", shop.pk, 2))
    assert said(response) == "shop v2 is now active (was v1)."
    assert "Roll back to v1" in admin_client.get(url("change", shop.pk)).content.decode()

    response = admin_client.post(url("rollback", shop.pk))
    assert said(response) == "Rolled back shop to v1 (was v2)."
    assert (last_event().action, last_event().actor, last_event().source) == (
        "rolled_back", admin_user.username, "admin")

    response = admin_client.post(url("retire", shop.pk, 1))
    assert "is the active version of shop: name the version that replaces it" in said(response)
    assert states() == {1: "active", 2: "staged"}

    response = admin_client.post(url("retire", shop.pk, 1), {"replacement": "2"})
    assert said(response) == "shop v1 is retired; v2 serves."
    assert states() == {1: "retired", 2: "active"}
    assert last_event().address == "127.0.0.1"


def test_the_buttons_take_post_only(admin_client, shop):
    assert admin_client.get(url("activate", shop.pk, 2)).status_code == 405
    assert states() == {1: "active", 2: "staged"}


def test_staff_without_the_version_permission_cannot_deploy(client, shop):
    user = User.objects.create_user("viewer", password="x-pass-123", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_mlmodel", "change_mlmodel"]))
    client.force_login(user)
    page = client.get(url("change", shop.pk)).content.decode()
    assert "Activate v2" not in page and "Upload and validate" not in page
    assert client.post(url("activate", shop.pk, 2)).status_code == 403
    assert states() == {1: "active", 2: "staged"}


@pytest.mark.django_db(transaction=True)
def test_the_add_page_creates_a_model_with_its_first_version(admin_client, admin_user, good):
    with open(good, "rb") as handle:
        response = admin_client.post(url("add"), {
            "name": "fresh", "task": "classification", "inputs": '["a", "b", "c"]', "outputs": "label",
            "sample_inputs": "[[0.1, 0.2, 0.3]]", "artifact": handle, "framework": "sklearn", "activate": "on",
            "versions-TOTAL_FORMS": "0", "versions-INITIAL_FORMS": "0",
        }, follow=True)
    assert response.status_code == 200, response.content
    model = MLModel.objects.get(name="fresh")
    assert model.sample_inputs == [[0.1, 0.2, 0.3]]
    assert [(v.version, v.status, v.created_by) for v in model.versions.all()] == [(1, "active", admin_user.username)]
    assert "Fresh v1 passed validation and is registered and activated." in response.content.decode()


def test_the_add_page_needs_a_framework_with_an_artifact(admin_client, good):
    with open(good, "rb") as handle:
        response = admin_client.post(url("add"), {
            "name": "fresh", "task": "classification", "inputs": '["a", "b", "c"]', "outputs": "label",
            "artifact": handle, "framework": "",
        })
    assert response.status_code == 200  # the form again, with the error
    assert "Choose the framework the artifact was saved with." in response.content.decode()
    assert not MLModel.objects.filter(name="fresh").exists()


def test_versions_are_not_added_or_edited_by_hand(admin_client, shop):
    version = shop.versions.get(version=2)
    assert admin_client.get(reverse("admin:inference_modelversion_add")).status_code == 403
    page = admin_client.get(reverse("admin:inference_modelversion_change", args=[version.pk])).content.decode()
    assert "Activate v2" in page and "Retire v2" in page
    admin_client.post(reverse("admin:inference_modelversion_change", args=[version.pk]),
                      {"status": "active", "is_active": "on"})
    assert states() == {1: "active", 2: "staged"}


def test_the_list_action_activates_through_the_lifecycle(admin_client, admin_user, shop):
    version = shop.versions.get(version=2)
    admin_client.post(reverse("admin:inference_modelversion_changelist"),
                      {"action": "make_active", "_selected_action": [version.pk]})
    assert states() == {1: "staged", 2: "active"}
    assert (last_event().action, last_event().actor) == ("activated", admin_user.username)


def test_the_deployment_audit_is_listed_read_only(admin_client, shop):
    listing = admin_client.get(reverse("admin:inference_deploymentevent_changelist"))
    assert listing.status_code == 200
    assert [(e.version_number, e.action) for e in listing.context["cl"].result_list] == [
        (2, "registered"), (1, "activated"), (1, "registered")]
    assert admin_client.get(reverse("admin:inference_deploymentevent_add")).status_code == 403
    event = DeploymentEvent.objects.first()
    page = admin_client.get(reverse("admin:inference_deploymentevent_change", args=[event.pk]))
    assert page.status_code == 200 and page.context["has_change_permission"] is False
    assert admin_client.post(reverse("admin:inference_deploymentevent_delete", args=[event.pk])).status_code == 403
