"""The rollout endpoints of the deployment API: each change, its audit, its errors, and who may call."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from inference.models import DeploymentEvent, MLModel
from monitoring.comparisons.models import ShadowComparison
from tests.streaming.test_deploy_api import bearer, error, make_key, upload
from tests.support import artifacts

pytestmark = pytest.mark.django_db

NEW_MODEL = {"task": "classification", "inputs": "a,b,c", "outputs": "label and probabilities"}
URL = "/api/v1/models/shop/rollout"


@pytest.fixture
def key():
    return make_key("ci", can_deploy=True)


@pytest.fixture
def shop(client, model_store, tmp_path, key):
    """``shop`` with v1 active and v2, v3 staged."""
    for number in (1, 2, 3):
        path = artifacts.skops_file(tmp_path / f"v{number}.skops", artifacts.classifier())
        response = upload(client, "shop", path, bearer(key), activate="true" if number == 1 else "", **NEW_MODEL)
        assert response.status_code == 201, response.content


def post(client, key, path, body=None):
    return client.post(f"{URL}/{path}", json.dumps(body or {}), content_type="application/json", **bearer(key))


def test_shadow_canary_promote_and_abort_through_the_api(client, shop, key):
    response = post(client, key, "shadow", {"version": 2, "sample_pct": 25})
    assert response.status_code == 200, response.content
    assert response.json()["shadow"] == {"version": 2, "sample_pct": 25.0}
    response = post(client, key, "canary", {"version": 3, "weight_pct": 10, "max_error_pct": 2, "max_p99_ms": 100})
    assert response.json()["canary"] == {"version": 3, "weight_pct": 10.0}
    assert response.json()["canary_limits"] == {"max_error_pct": 2.0, "max_p99_ms": 100.0}
    ShadowComparison.objects.create(minute=datetime.now(UTC).replace(second=0, microsecond=0), model="shop",
                                    primary_version=1, shadow_version=2, requests=4, rows=4, agreed_rows=3)
    detail = client.get(URL, **bearer(key)).json()
    assert detail["active_version"] == 1 and detail["comparisons"][0]["agreement"] == 0.75
    response = post(client, key, "promote")
    assert response.status_code == 200 and response.json()["version"]["version"] == 3
    assert response.json()["previous_version"] == 1
    model = MLModel.objects.get(name="shop")
    assert (model.shadow_version, model.canary_version, model.active_version.version) == (None, None, 3)
    post(client, key, "shadow", {"version": 1})
    response = post(client, key, "abort", {"reason": "enough"})
    assert response.status_code == 200 and response.json()["shadow"] is None
    events = list(DeploymentEvent.objects.filter(source="api", actor="key:ci").order_by("id").values_list(
        "action", "version_number"))
    assert events[-6:] == [("shadow_set", 2), ("canary_set", 3), ("activated", 3), ("promoted", 3),
                           ("shadow_set", 1), ("aborted", 1)]


def test_a_null_version_removes_the_shadow(client, shop, key):
    post(client, key, "shadow", {"version": 2})
    response = post(client, key, "shadow", {"version": None})
    assert response.status_code == 200 and response.json()["shadow"] is None


@pytest.mark.parametrize("path, body, status, code", [
    ("shadow", {}, 400, "invalid_request"),
    ("shadow", {"version": "two"}, 400, "invalid_request"),
    ("shadow", {"version": 2, "sample_pct": 150}, 400, "invalid_request"),
    ("canary", {"version": 2}, 400, "invalid_request"),
    ("canary", {"version": 2, "weight_pct": "lots"}, 400, "invalid_request"),
    ("canary", {"version": 2, "weight_pct": 5, "max_p99_ms": -1}, 400, "invalid_request"),
    ("canary", {"version": 9, "weight_pct": 5}, 404, "not_found"),
    ("canary", {"version": 1, "weight_pct": 5}, 409, "conflict"),
    ("promote", {}, 409, "conflict"),
    ("abort", {}, 409, "conflict"),
])
def test_bad_requests_are_answered_with_their_error_and_change_nothing(client, shop, key, path, body, status, code):
    before = DeploymentEvent.objects.count()
    response = post(client, key, path, body)
    assert response.status_code == status and error(response)["code"] == code, response.content
    assert DeploymentEvent.objects.count() == before


def test_a_body_that_is_not_json_is_400(client, shop, key):
    response = client.post(f"{URL}/shadow", "{", content_type="application/json", **bearer(key))
    assert response.status_code == 400 and error(response)["code"] == "invalid_request"


def test_a_prediction_key_may_not_roll_out_and_get_needs_get(client, shop):
    predict_key = make_key("frontend", can_deploy=False)
    assert post(client, predict_key, "shadow", {"version": 2}).status_code == 403
    assert client.post(URL, **bearer(make_key("ci2", can_deploy=True))).status_code == 405
    assert client.get(f"{URL}/promote").status_code == 405
