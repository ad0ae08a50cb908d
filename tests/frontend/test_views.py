"""The dashboard page, its login page, and the try-it key the page is given."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.contrib.staticfiles import finders
from django.utils import timezone

from frontend.views import DASHBOARD_KEY_LIFETIME, DASHBOARD_KEY_RATE_PER_S
from inference.models import MLModel
from streaming.models import APIKey, hash_key
from tests.frontend.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def page_config(response) -> dict:
    found = re.search(r'<script id="dashboard-config" type="application/json">(.*?)</script>',
                      response.content.decode(), re.S)
    assert found, "the page carries no configuration for its scripts"
    return json.loads(found.group(1))


def dashboard_keys(user):
    return APIKey.objects.filter(created_by=user, name__startswith=f"dashboard-{user.username}-")


def test_an_anonymous_visitor_is_sent_to_the_login_page(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/"


def test_a_user_who_is_not_staff_is_refused(client, plain_user):
    client.force_login(plain_user)
    response = client.get("/")
    assert response.status_code == 403
    assert "not a staff account" in response.content.decode()
    assert not APIKey.objects.exists()


def test_staff_get_the_dashboard_and_a_short_lived_key(client, staff_user):
    client.force_login(staff_user)
    response = client.get("/")

    assert response.status_code == 200
    assert response["Cache-Control"].startswith("max-age=0")
    config = page_config(response)
    key = dashboard_keys(staff_user).get()
    assert key.key_hash == hash_key(config["apiKey"])
    assert key.is_active
    assert key.rate_limit_per_s == DASHBOARD_KEY_RATE_PER_S
    assert abs(key.expires_at - (timezone.now() + DASHBOARD_KEY_LIFETIME)) < timedelta(minutes=1)
    assert config["dashboardPath"] == "/ws/v1/dashboard/"
    assert config["predictPath"] == "/ws/v1/predict/"
    page = response.content.decode()
    assert "/static/vendor/chartjs/chart.umd.min.js" in page
    assert '<script type="module" src="/static/frontend/dashboard.js">' in page


def test_reloading_the_page_reuses_the_key(client, staff_user):
    client.force_login(staff_user)
    first = page_config(client.get("/"))["apiKey"]
    second = page_config(client.get("/"))["apiKey"]
    assert first == second
    assert dashboard_keys(staff_user).count() == 1


def test_a_key_about_to_expire_is_replaced_and_dead_keys_are_pruned(client, staff_user, django_user_model):
    other = django_user_model.objects.create_user("someone", password=PASSWORD, is_staff=True)
    client.force_login(other)
    client.get("/")
    client.force_login(staff_user)
    first = page_config(client.get("/"))["apiKey"]
    old = APIKey.objects.get(key_hash=hash_key(first))
    expired = APIKey(name=f"dashboard-{staff_user.username}-expired", created_by=staff_user,
                     expires_at=timezone.now() - timedelta(minutes=1))
    expired.set_new_key()
    expired.save()
    unrelated = APIKey(name="ci-client", created_by=staff_user, expires_at=timezone.now() - timedelta(days=1))
    unrelated.set_new_key()
    unrelated.save()
    APIKey.objects.filter(pk=old.pk).update(expires_at=timezone.now() + timedelta(minutes=30))

    renewed = page_config(client.get("/"))["apiKey"]

    assert renewed != first
    # The old key stays usable until it expires: another tab may still hold it.
    assert set(dashboard_keys(staff_user).values_list("key_hash", flat=True)) == {hash_key(renewed), old.key_hash}
    assert not APIKey.objects.filter(pk=expired.pk).exists()
    assert APIKey.objects.filter(pk=unrelated.pk).exists(), "a key the dashboard did not mint was deleted"
    assert dashboard_keys(other).count() == 1, "another user's key was touched"


def test_logging_out_revokes_the_key(client, staff_user):
    client.force_login(staff_user)
    raw = page_config(client.get("/"))["apiKey"]

    response = client.post("/logout/")

    assert response.status_code == 302
    assert response["Location"] == "/login/"
    assert not APIKey.objects.get(key_hash=hash_key(raw)).is_active


def test_the_login_page_logs_staff_in(client, staff_user):
    page = client.get("/login/?next=/")
    assert page.status_code == 200
    assert 'name="username"' in page.content.decode()

    response = client.post("/login/", {"username": "operator", "password": PASSWORD, "next": "/"})

    assert response.status_code == 302
    assert response["Location"] == "/"


def test_the_login_page_says_when_the_password_is_wrong(client, staff_user):
    response = client.post("/login/", {"username": "operator", "password": "wrong", "next": "/"})
    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()


def test_the_try_it_form_is_prefilled_with_an_example_row(client, staff_user):
    MLModel.objects.create(name="iris", task="classification", outputs="label",
                           inputs=["sepal_length", "sepal_width", "petal_length", "petal_width"])
    MLModel.objects.create(name="in-house", task="regression", outputs="value", inputs=["a", "b", "c"])
    client.force_login(staff_user)

    examples = page_config(client.get("/"))["examples"]

    assert examples == {"iris": [5.1, 3.5, 1.4, 0.2], "in-house": [0.0, 0.0, 0.0]}


def test_the_chart_library_installed_by_setup_is_a_static_file():
    assert finders.find("vendor/chartjs/chart.umd.min.js"), (
        "frontend/node_modules/chart.js is missing: run `make setup` (npm ci --prefix frontend)."
    )
