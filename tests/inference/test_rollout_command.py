"""``manage.py rollout``: each action, its audit as a command, and the errors an operator reads."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from inference import deployment
from inference.models import DeploymentEvent, MLModel
from tests.support import artifacts

pytestmark = pytest.mark.django_db

SCHEMA = deployment.ModelSchema(task="classification", inputs=artifacts.FEATURES, outputs="label")


@pytest.fixture
def shop(model_store, tmp_path):
    for number in (1, 2, 3):
        path = artifacts.skops_file(tmp_path / f"v{number}.skops")
        deployment.register("shop", path, "sklearn", actor="t", source="command", activate=number == 1,
                            schema=SCHEMA)


def rollout(*args, capsys):
    call_command("rollout", "shop", *args, "--actor", "ops")
    return capsys.readouterr().out


def test_shadow_then_canary_then_promote(shop, capsys):
    assert "shadow v2 at 30% of requests" in rollout("--shadow", "2", "--sample", "30", capsys=capsys)
    out = rollout("--canary", "3", "--weight", "20", "--max-error-pct", "5", "--max-p99-ms", "250", capsys=capsys)
    assert "canary v3 answering 20% of requests" in out and "shadow v2" in out
    model = MLModel.objects.get(name="shop")
    assert (model.canary_max_error_pct, model.canary_max_p99_ms) == (5.0, 250.0)
    assert "promoted v3 to active" in rollout("--promote", capsys=capsys)
    assert MLModel.objects.get(name="shop").active_version.version == 3
    events = DeploymentEvent.objects.filter(actor="ops", source="command").values_list("action", flat=True)
    assert list(events.order_by("id")) == ["shadow_set", "canary_set", "activated", "promoted"]


def test_abort_ends_the_rollout(shop, capsys):
    rollout("--canary", "2", "--weight", "5", capsys=capsys)
    assert "no rollout" in rollout("--abort", capsys=capsys)


@pytest.mark.parametrize("args, message", [
    (("--canary", "2"), "--canary needs --weight"),
    (("--weight", "5"), "one of the arguments"),
    (("--shadow", "2", "--weight", "5"), "go with --canary"),
    (("--shadow", "1"), "is the active version"),
    (("--shadow", "7"), "has no version 7"),
    (("--shadow", "2", "--sample", "120"), "between 0 and 100"),
    (("--promote",), "no canary or shadow version to promote"),
    (("--abort",), "no rollout to abort"),
])
def test_mistakes_exit_with_a_sentence(shop, args, message):
    with pytest.raises((CommandError, SystemExit)) as caught:
        call_command("rollout", "shop", *args)
    if isinstance(caught.value, CommandError):
        assert message in str(caught.value)
