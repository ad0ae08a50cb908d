"""The rollout panel of a model's admin page, and the comparison tables in the monitoring admin."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from inference.models import DeploymentEvent, MLModel
from monitoring.comparisons.models import ShadowComparison, ShadowDisagreement
from tests.inference.test_deploy_admin import SCHEMA, WHO, said, url
from tests.support import artifacts

pytestmark = pytest.mark.django_db


@pytest.fixture
def shop(model_store, tmp_path):
    """``shop`` with v1 active and v2, v3 staged."""
    from inference import deployment

    good = artifacts.skops_file(tmp_path / "good.skops")
    for number in (1, 2, 3):
        deployment.register("shop", good, "sklearn", schema=SCHEMA, activate=number == 1, **WHO)
    return MLModel.objects.get(name="shop")


def test_set_shadow_and_canary_then_promote_from_the_model_page(admin_client, shop):
    page = admin_client.get(url("change", shop.pk)).content.decode()
    assert "Rollout" in page and "No shadow." in page and f'action="{url("rollout_shadow", shop.pk)}"' in page
    response = admin_client.post(url("rollout_shadow", shop.pk), {"shadow-version": 2, "shadow-sample_pct": 40})
    assert "v2 is the shadow of shop, copied 40% of requests." == said(response)
    response = admin_client.post(url("rollout_canary", shop.pk), {
        "canary-version": 3, "canary-weight_pct": 10, "canary-max_error_pct": 5, "canary-max_p99_ms": ""})
    assert "answering 10% of requests" in said(response)
    shop.refresh_from_db()
    assert (shop.shadow_version, shop.shadow_sample_pct, shop.canary_version, shop.canary_weight_pct) == (2, 40, 3, 10)
    assert (shop.canary_max_error_pct, shop.canary_max_p99_ms) == (5.0, None)
    page = admin_client.get(url("change", shop.pk)).content.decode()
    assert "Promote v3 to active" in page and "Abort the rollout" in page
    response = admin_client.post(url("rollout_promote", shop.pk))
    assert "shop v3 is now active" in said(response)
    event = DeploymentEvent.objects.order_by("id").last()
    assert (event.action, event.source, event.actor) == ("promoted", "admin", "admin")


def test_remove_and_abort_and_refusals(admin_client, shop):
    admin_client.post(url("rollout_shadow", shop.pk), {"shadow-version": 2, "shadow-sample_pct": 100})
    response = admin_client.post(url("rollout_shadow", shop.pk), {"remove": "1"})
    assert said(response) == "shop has no shadow any more."
    response = admin_client.post(url("rollout_canary", shop.pk), {"canary-version": 2, "canary-weight_pct": 300})
    assert said(response).startswith("Nothing changed: weight_pct")
    response = admin_client.post(url("rollout_abort", shop.pk))
    assert "no rollout to abort" in said(response)
    admin_client.post(url("rollout_canary", shop.pk), {"canary-version": 2, "canary-weight_pct": 5})
    response = admin_client.post(url("rollout_abort", shop.pk))
    assert "v1 serves everything" in said(response)
    assert admin_client.get(url("rollout_abort", shop.pk)).status_code == 405


def test_the_rollout_fields_are_not_edited_in_the_models_form(admin_client, shop):
    page = admin_client.get(url("change", shop.pk)).content.decode()
    assert 'name="shadow_version"' not in page and 'name="canary_weight_pct"' not in page


def test_a_user_without_the_deploy_permission_cannot_change_the_rollout(client, shop):
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    client.force_login(user)
    assert client.post(url("rollout_promote", shop.pk)).status_code == 403


def test_comparisons_show_on_the_model_page_and_export_as_csv(admin_client, shop):
    minute = datetime.now(UTC).replace(second=0, microsecond=0)
    ShadowComparison.objects.create(minute=minute, model="shop", primary_version=1, shadow_version=2, requests=8,
                                    rows=8, agreed_rows=6, sum_abs_diff=0.8, max_abs_diff=0.3)
    ShadowComparison.objects.create(minute=minute, model="other", primary_version=1, shadow_version=2, requests=1,
                                    rows=1, agreed_rows=1)
    ShadowDisagreement.objects.create(at=minute, model="shop", primary_version=1, shadow_version=2,
                                      inputs=[1, 2, 3], primary_output={"label": "a"},
                                      shadow_output={"label": "=cmd"}, abs_diff=0.3)
    page = admin_client.get(url("change", shop.pk)).content.decode()
    assert "Shadow comparisons, last hour" in page and "75%" in page
    changelist = reverse("admin:monitoring_shadowcomparison_changelist")
    listed = admin_client.get(changelist, {"model": "shop"}).content.decode()
    assert "75.0%" in listed and "Export as CSV" in listed
    exported = admin_client.get(reverse("admin:monitoring_shadowcomparison_export"), {"model": "shop"})
    rows = list(csv.DictReader(io.StringIO(exported.content.decode())))
    assert [(r["model"], r["requests"], r["agreed_rows"]) for r in rows] == [("shop", "8", "6")]
    exported = admin_client.get(reverse("admin:monitoring_shadowdisagreement_export"))
    (row,) = csv.DictReader(io.StringIO(exported.content.decode()))
    assert row["inputs"] == "[1, 2, 3]" and '"=cmd"' in row["shadow_output"]
    assert admin_client.post(reverse("admin:monitoring_shadowcomparison_add")).status_code == 403
