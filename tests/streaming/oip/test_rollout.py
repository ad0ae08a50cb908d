"""A canary over the Open Inference Protocol: its share of the requests, the same ones again, never a pinned one."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async

from inference.rollout import changes
from streaming.oip.app import OpenInferenceApp
from tests.streaming.oip.test_app import answer, django_stand_in, infer, start

pytestmark = pytest.mark.django_db(transaction=True)

ROW = [6.0, 2.9, 4.5, 1.5]


async def test_a_canary_answers_its_share_of_v2_requests_reproducibly(pool, deploy, settings):
    settings.PLATFORM_REQUIRE_API_KEY = False
    await deploy("iris", 1.0)
    await deploy("iris", 0.01, activate=False)
    await database_sync_to_async(changes.set_canary)("iris", 2, weight_pct=50, actor="t", source="command")
    await pool.reconcile()
    app = OpenInferenceApp(django_stand_in)

    async def versions(path: str) -> list[str]:
        found = []
        for n in range(200):
            status, _, body = await answer(start(app, "POST", path, infer([ROW], rid=f"r{n}")))
            assert status == 200, body
            found.append(body["model_version"])
        return found

    first = await versions("/v2/models/iris/infer")
    assert 70 <= first.count("2") <= 130
    assert await versions("/v2/models/iris/infer") == first
    assert set(await versions("/v2/models/iris/versions/1/infer")) == {"1"}
