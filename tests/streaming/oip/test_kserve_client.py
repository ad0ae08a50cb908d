"""The kserve SDK's REST client (``InferenceRESTClient``, protocol v2) against a real server, for every demo model."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.streaming.oip.test_http_e2e import DEMO_MODELS, websocket_reply
from tests.support.kserve_env import KServeUnavailable, kserve_python
from tests.support.services import manage

pytestmark = pytest.mark.realservice

CLIENT = Path(__file__).with_name("kserve_rest_client.py")


@pytest.fixture(scope="module")
def python() -> Path:
    try:
        return kserve_python()
    except KServeUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


async def test_kserve_rest_client_gets_the_websocket_protocols_outputs_for_every_demo_model(daphne_server, python):
    key = manage("create_api_key", "kserve-client", env=daphne_server.env).stdout.strip()
    ready, _ = await websocket_reply(daphne_server, key, {"type": "ping", "id": 0})
    requests, expected = [], {}
    for name in DEMO_MODELS:
        features = ready["models"][name]["inputs"]
        rows = np.random.default_rng(5).uniform(0, 5, size=(2, len(features))).round(3).tolist()
        _, reply = await websocket_reply(daphne_server, key, {"id": "ws", "model": name, "inputs": rows})
        requests.append({"model": name, "rows": rows, "id": f"kserve-{name}"})
        expected[name] = reply

    job = json.dumps({"url": daphne_server.url, "key": key, "requests": requests})
    done = await asyncio.to_thread(subprocess.run, [str(python), str(CLIENT)], input=job.encode(),
                                   capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    answers = json.loads(done.stdout)

    assert answers["server_ready"] is True
    for request, answer in zip(requests, answers["models"], strict=True):
        # (kserve's InferResponse.from_bytes does not read model_version back.)
        name, reply = request["model"], expected[request["model"]]
        assert answer["ready"] is True and answer["id"] == request["id"] and answer["model_name"] == name
        rows = reply["outputs"]
        if "label" in rows[0]:
            classes = list(rows[0]["probabilities"])
            assert answer["outputs"]["label"] == [row["label"] for row in rows]
            assert answer["outputs"]["probabilities"] == [row["probabilities"][c] for row in rows for c in classes]
            assert answer["shapes"]["probabilities"] == [len(rows), len(classes)]
        else:
            assert answer["outputs"]["value"] == [row["value"] for row in rows]
