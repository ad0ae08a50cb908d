"""The deployment API: who may call it, each change through it, and its errors as JSON a pipeline can read."""

from __future__ import annotations

import base64
import io
import json

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.test import Client

from inference.models import DeploymentEvent, MLModel, ModelVersion
from streaming.models import APIKey
from tests.support import artifacts

pytestmark = pytest.mark.django_db

NEW_MODEL = {"task": "classification", "inputs": "a,b,c", "outputs": "label and probabilities"}


def make_key(name, *, can_deploy, models=()):
    key = APIKey(name=name, can_deploy=can_deploy)
    raw = key.set_new_key()
    key.save()
    key.allowed_models.set(MLModel.objects.filter(name__in=models))
    return raw


def bearer(raw):
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def basic(username, password):
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


@pytest.fixture
def good(model_store, tmp_path):
    return artifacts.skops_file(tmp_path / "good.skops")


@pytest.fixture
def deploy_key():
    return make_key("ci", can_deploy=True)


@pytest.fixture
def predict_key():
    return make_key("shop-frontend", can_deploy=False)


def upload(client, name, path, auth, **fields):
    with open(path, "rb") as handle:
        return client.post(f"/api/v1/models/{name}/versions",
                           {"artifact": handle, "framework": "sklearn", **fields}, **auth)


@pytest.fixture
def shop(client, good, deploy_key):
    """``shop`` with v1 registered through the API and active."""
    response = upload(client, "shop", good, bearer(deploy_key), activate="true", **NEW_MODEL)
    assert response.status_code == 201, response.content
    return response


def states():
    return {v.version: v.status for v in ModelVersion.objects.filter(model__name="shop")}


def error(response):
    return response.json()["error"]


# -- who may call ------------------------------------------------------------------------------------


ROUTES = [
    ("get", "/api/v1/models/shop"),
    ("post", "/api/v1/models/shop/versions"),
    ("post", "/api/v1/models/shop/versions/1/activate"),
    ("post", "/api/v1/models/shop/rollback"),
    ("post", "/api/v1/models/shop/versions/1/retire"),
]


@pytest.mark.parametrize("method,url", ROUTES)
def test_a_prediction_key_gets_403_on_every_route_and_changes_nothing(client, shop, predict_key, method, url):
    before = list(DeploymentEvent.objects.values_list("id", flat=True))
    response = getattr(client, method)(url, **bearer(predict_key))
    assert response.status_code == 403
    assert "may make predictions but not deploy models" in error(response)["message"]
    assert list(DeploymentEvent.objects.values_list("id", flat=True)) == before
    assert states() == {1: "active"}


@pytest.mark.parametrize("method,url", ROUTES)
def test_no_credentials_or_a_bad_key_get_401_with_a_challenge(client, shop, method, url):
    for auth in ({}, bearer("pk_not-a-key"), {"HTTP_AUTHORIZATION": "Token abc"}):
        response = getattr(client, method)(url, **auth)
        assert response.status_code == 401, auth
        assert "Bearer" in response["WWW-Authenticate"] and error(response)["code"] == "unauthorized"


def test_a_revoked_deploy_key_gets_401(client, shop, deploy_key):
    APIKey.objects.get(name="ci").revoke()
    assert client.get("/api/v1/models/shop", **bearer(deploy_key)).status_code == 401


def test_a_key_limited_to_some_models_deploys_only_those(client, shop, good):
    limited = make_key("shop-ci", can_deploy=True, models=["shop"])
    assert client.get("/api/v1/models/shop", **bearer(limited)).status_code == 200
    response = upload(client, "other", good, bearer(limited), **NEW_MODEL)
    assert response.status_code == 403 and "may not deploy 'other'" in error(response)["message"]
    assert not MLModel.objects.filter(name="other").exists()


def test_staff_users_deploy_with_basic_auth_and_others_are_refused(client, shop):
    User.objects.create_user("dora", password="s3cret-pass", is_staff=True).user_permissions.add(
        Permission.objects.get(codename="change_modelversion"))
    User.objects.create_user("olaf", password="s3cret-pass")
    response = client.post("/api/v1/models/shop/versions/1/retire", **basic("olaf", "s3cret-pass"))
    assert response.status_code == 403 and "only active staff users" in error(response)["message"]
    assert client.get("/api/v1/models/shop", **basic("dora", "wrong")).status_code == 401

    response = client.get("/api/v1/models/shop", **basic("dora", "s3cret-pass"))
    assert response.status_code == 200 and response.json()["active_version"] == 1


def test_a_staff_session_must_send_its_csrf_token(shop, good, admin_user):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(admin_user)
    assert browser.get("/api/v1/models/shop").status_code == 200
    refused = upload(browser, "shop", good, {})
    assert refused.status_code == 403 and "CSRF" in error(refused)["message"]

    browser.get("/admin/")  # sets the csrftoken cookie
    token = browser.cookies["csrftoken"].value
    accepted = upload(browser, "shop", good, {"HTTP_X_CSRFTOKEN": token})
    assert accepted.status_code == 201
    assert DeploymentEvent.objects.order_by("id").last().actor == admin_user.username


# -- the lifecycle through the API ------------------------------------------------------------------


def test_a_deploy_key_registers_activates_rolls_back_and_retires(client, shop, good, deploy_key):
    assert shop.json()["created_model"] is True and shop.json()["version"]["status"] == "active"
    staged = upload(client, "shop", good, bearer(deploy_key))
    assert staged.status_code == 201 and staged.json()["version"]["status"] == "staged"

    activated = client.post("/api/v1/models/shop/versions/2/activate", **bearer(deploy_key))
    assert activated.status_code == 200
    assert activated.json()["previous_version"] == 1 and activated.json()["version"]["active"] is True

    rolled = client.post("/api/v1/models/shop/rollback", **bearer(deploy_key))
    assert rolled.status_code == 200 and rolled.json()["version"]["version"] == 1

    retired = client.post("/api/v1/models/shop/versions/2/retire", **bearer(deploy_key))
    assert retired.status_code == 200 and retired.json()["active_version"] == 1
    assert states() == {1: "active", 2: "retired"}

    events = client.get("/api/v1/models/shop", **bearer(deploy_key)).json()["events"]
    assert [(e["version"], e["action"]) for e in reversed(events)] == [
        (1, "registered"), (1, "activated"), (2, "registered"), (2, "activated"), (1, "rolled_back"),
        (2, "retired"),
    ]
    assert {(e["actor"], e["source"], e["address"]) for e in events} == {("key:ci", "api", "127.0.0.1")}


def test_the_model_page_lists_versions_states_and_reasons(client, shop, deploy_key, tmp_path):
    upload(client, "shop", artifacts.pickle_posing_as_skops(tmp_path / "bad.skops"), bearer(deploy_key))
    body = client.get("/api/v1/models/shop", **bearer(deploy_key)).json()
    assert (body["name"], body["task"], body["inputs"], body["active_version"]) == (
        "shop", "classification", ["a", "b", "c"], 1)
    assert [(v["version"], v["status"]) for v in body["versions"]] == [(2, "failed"), (1, "active")]
    assert "pickle or joblib" in body["versions"][0]["failure_reason"]
    assert body["versions"][1]["classes"] == artifacts.CLASSES


def test_a_new_model_takes_its_inputs_as_a_json_list_too(client, good, deploy_key):
    fields = {**NEW_MODEL, "inputs": json.dumps(["a", "b", "c"]), "sample_inputs": json.dumps(artifacts.SAMPLE_ROWS)}
    assert upload(client, "shop", good, bearer(deploy_key), **fields).status_code == 201
    assert MLModel.objects.get(name="shop").sample_inputs == artifacts.SAMPLE_ROWS


# -- errors ------------------------------------------------------------------------------------------


def test_an_artifact_that_fails_validation_is_400_with_the_failed_version(client, shop, deploy_key, tmp_path):
    bad = artifacts.untrusted_skops(tmp_path / "bad.skops")
    response = upload(client, "shop", bad, bearer(deploy_key), activate="1")
    assert response.status_code == 400
    assert error(response)["code"] == "validation_failed"
    assert "shop v2 failed validation" in error(response)["message"]
    assert response.json()["version"]["status"] == "failed"
    assert "HalvingRegressor" in response.json()["version"]["failure_reason"]
    assert states() == {1: "active", 2: "failed"}


def test_an_artifact_over_the_limit_is_413_and_recorded_failed(client, shop, good, deploy_key, settings):
    settings.PLATFORM_MAX_ARTIFACT_BYTES = good.stat().st_size - 1
    response = upload(client, "shop", good, bearer(deploy_key))
    assert response.status_code == 413 and error(response)["code"] == "too_large"
    assert "larger than the limit" in response.json()["version"]["failure_reason"]
    assert states() == {1: "active", 2: "failed"}


@pytest.mark.parametrize("method,url,fragment", [
    ("get", "/api/v1/models/nope", "no model named 'nope'"),
    ("post", "/api/v1/models/shop/versions/9/activate", "shop has no version 9"),
    ("post", "/api/v1/models/shop/versions/9/retire", "shop has no version 9"),
])
def test_unknown_models_and_versions_are_404(client, shop, deploy_key, method, url, fragment):
    response = getattr(client, method)(url, **bearer(deploy_key))
    assert response.status_code == 404 and fragment in error(response)["message"]


def test_state_conflicts_are_409_and_change_nothing(client, shop, deploy_key):
    response = client.post("/api/v1/models/shop/versions/1/retire", **bearer(deploy_key))
    assert response.status_code == 409 and "name the version that replaces it" in error(response)["message"]
    response = client.post("/api/v1/models/shop/rollback", **bearer(deploy_key))
    assert response.status_code == 409 and "no earlier active version" in error(response)["message"]
    assert states() == {1: "active"}


def test_retiring_the_active_version_with_a_json_replacement(client, shop, good, deploy_key):
    upload(client, "shop", good, bearer(deploy_key))
    response = client.post("/api/v1/models/shop/versions/1/retire", data=json.dumps({"replacement": 2}),
                           content_type="application/json", **bearer(deploy_key))
    assert response.status_code == 200 and response.json()["active_version"] == 2
    assert states() == {1: "retired", 2: "active"}


@pytest.mark.parametrize("fields,fragment", [
    ({"framework": "pytorch"}, "Unknown framework 'pytorch'"),
    ({"task": "classification"}, "needs all of task, inputs and outputs"),
])
def test_malformed_requests_are_400(client, shop, good, deploy_key, fields, fragment):
    response = upload(client, "shop", good, bearer(deploy_key), **fields)
    assert response.status_code == 400 and fragment in error(response)["message"]
    missing = client.post("/api/v1/models/shop/versions", {"framework": "sklearn"}, **bearer(deploy_key))
    assert missing.status_code == 400 and "multipart field 'artifact'" in error(missing)["message"]
    assert states() == {1: "active"}


def test_a_new_model_without_its_schema_is_400(client, good, deploy_key):
    response = upload(client, "fresh", good, bearer(deploy_key))
    assert response.status_code == 400 and "give its task, inputs and outputs" in error(response)["message"]


def test_the_wrong_method_is_405(client, shop, deploy_key):
    response = client.get("/api/v1/models/shop/rollback", **bearer(deploy_key))
    assert response.status_code == 405 and response["Allow"] == "POST"


def test_create_api_key_with_deploy_makes_a_deploy_key(db):
    out, err = io.StringIO(), io.StringIO()
    call_command("create_api_key", "pipeline", "--deploy", stdout=out, stderr=err)
    assert APIKey.objects.get(name="pipeline").can_deploy
    assert "may deploy models" in err.getvalue()
    call_command("create_api_key", "frontend", stdout=out, stderr=err)
    assert not APIKey.objects.get(name="frontend").can_deploy
