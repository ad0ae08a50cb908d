"""The dashboard's shadow-agreement card and the JSON it reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import User

from monitoring.comparisons.models import ShadowComparison

pytestmark = pytest.mark.django_db


def test_each_pair_gets_its_agreement_per_minute_of_the_last_hour(admin_client):
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    for minutes_ago, agreed in ((2, 90), (1, 80), (90, 10)):
        ShadowComparison.objects.create(minute=now - timedelta(minutes=minutes_ago), model="m", primary_version=1,
                                        shadow_version=2, requests=100, rows=100, agreed_rows=agreed)
    ShadowComparison.objects.create(minute=now, model="m", primary_version=1, shadow_version=3, dropped=5)
    (series,) = admin_client.get("/dashboard/agreement.json").json()["series"]
    assert series["label"] == "m v1 vs v2"
    assert [(p["agreement"], p["requests"]) for p in series["points"]] == [(90.0, 100), (80.0, 100)]
    page = admin_client.get("/").content.decode()
    assert 'id="agreement"' in page and "/dashboard/agreement.json" in page


def test_only_staff_read_it(client):
    assert client.get("/dashboard/agreement.json").status_code == 302
    client.force_login(User.objects.create_user("someone", password="pw"))
    assert client.get("/dashboard/agreement.json").status_code == 403
