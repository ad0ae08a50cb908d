"""The prediction client against a real daphne server: pipelining, both encodings, errors, the sync wrapper."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest

from streaming.client import (
    AuthenticationFailed,
    ConnectionRejected,
    PredictionClient,
    RequestFailed,
    SyncPredictionClient,
)
from tests.streaming.helpers import assert_outputs_match, framework_predictions
from tests.support.services import REPO_ROOT

from .conftest import create_key, iris_rows, predict_url


@pytest.fixture(scope="module")
def server(daphne_server):
    return daphne_server


@pytest.fixture(scope="module")
def keys(server):
    return {
        "all": create_key(server, "client-all"),
        "slow": create_key(server, "client-slow", "--rate", "4"),
    }


def iris_expected(server, demo_data, rows):
    from django.core import serializers

    objects = [d.object for d in serializers.deserialize("json", demo_data.registry_fixture.read_text())]
    mlmodel = next(o for o in objects if type(o).__name__ == "MLModel" and o.name == "iris")
    version = next(o for o in objects if type(o).__name__ == "ModelVersion" and o.model_id == mlmodel.pk)
    path = server.data_dir / "models" / version.artifact
    return framework_predictions(path, version.framework, version.metadata.get("classes"), rows)


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_pipelined_requests_are_each_answered_with_their_own_outputs(server, keys, demo_data, encoding):
    rows = iris_rows(300)
    async with PredictionClient(predict_url(server), keys["all"], encoding=encoding) as client:
        assert "iris" in client.models
        replies = await asyncio.gather(*(client.predict("iris", [row]) for row in rows))
        assert client.pending == 0
    assert all(reply["type"] == "prediction" and reply["model"] == "iris" for reply in replies)
    # Several requests shared a model call: they really were in flight together.
    assert max(reply["batch_size"] for reply in replies) > 1
    expected = await asyncio.to_thread(iris_expected, server, demo_data, rows)
    assert_outputs_match([reply["outputs"][0] for reply in replies], expected)


async def test_the_model_in_the_url_is_the_default_and_a_version_can_be_named(server, keys):
    async with PredictionClient(predict_url(server, "iris"), keys["all"], auth="message") as client:
        version = client.models["iris"]["version"]
        reply = await client.predict(None, [[5.1, 3.5, 1.4, 0.2]], version=version)
        with pytest.raises(RequestFailed) as missing:
            await client.predict(None, [[5.1, 3.5, 1.4, 0.2]], version=version + 100)
    assert reply["version"] == version and reply["outputs"][0]["label"] == "setosa"
    assert missing.value.code == "unknown_model" and missing.value.retry_after_ms is None


async def test_an_error_reply_raises_with_its_code_and_the_connection_serves_on(server, keys):
    async with PredictionClient(predict_url(server), keys["all"]) as client:
        bad = client.predict("iris", [[1.0, 2.0, 3.0]])
        good = client.predict("iris", [[5.1, 3.5, 1.4, 0.2]])
        results = await asyncio.gather(bad, good, return_exceptions=True)
    assert isinstance(results[0], RequestFailed) and results[0].code == "invalid_input", results[0]
    assert "expected 4 features" in results[0].message
    assert results[1]["outputs"][0]["label"] == "setosa"


async def test_a_bad_key_raises_authentication_failed(server, keys):
    with pytest.raises(AuthenticationFailed, match="4401") as refused:
        await PredictionClient(predict_url(server), "not-a-key").connect()
    assert refused.value.close_code == 4401


async def test_a_model_in_the_url_that_does_not_exist_is_refused(server, keys):
    with pytest.raises(ConnectionRejected, match="4404"):
        await PredictionClient(predict_url(server, "no-such-model"), keys["all"]).connect()


async def test_rate_limited_requests_wait_retry_after_ms_and_are_all_answered(server, keys):
    """12 requests on a key allowed 4 a second: 4 at once, the rest after the waits the server names."""
    async with PredictionClient(predict_url(server), keys["slow"], max_retries=0) as client:
        results = await asyncio.gather(*(client.predict("iris", [row]) for row in iris_rows(8)),
                                       return_exceptions=True)
    refused = [r for r in results if isinstance(r, RequestFailed)]
    assert refused and all(r.code == "rate_limited" and r.retry_after_ms > 0 for r in refused), results
    await asyncio.sleep(2.5)  # the bucket fills again

    started = time.monotonic()
    async with PredictionClient(predict_url(server), keys["slow"], max_retries=30) as client:
        replies = await asyncio.gather(*(client.predict("iris", [row]) for row in iris_rows(12)))
    elapsed_s = time.monotonic() - started
    assert [r["type"] for r in replies] == ["prediction"] * 12
    # Retrying at once instead of after retry_after_ms would run out of retries in milliseconds.
    assert elapsed_s >= 1.5, elapsed_s


def test_the_sync_client_pipelines_with_futures(server, keys):
    rows = iris_rows(40)
    with SyncPredictionClient(predict_url(server), keys["all"], encoding="msgpack") as client:
        futures = [client.submit("iris", [row]) for row in rows]
        replies = [future.result(timeout=30) for future in futures]
        single = client.predict("iris", [[5.1, 3.5, 1.4, 0.2]], timeout_s=30)
    assert len(replies) == 40 and all(reply["type"] == "prediction" for reply in replies)
    assert single["outputs"][0]["label"] == "setosa"


def test_the_client_imports_without_django_settings():
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    code = ("import sys, streaming.client; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'django', 'channels', 'inference', 'monitoring'}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


async def test_overloaded_requests_are_retried_after_retry_after_ms(start_daphne):
    """A queue of one request: a burst overflows it; the client waits as told and sends again."""
    server = start_daphne({"PLATFORM_QUEUE_CAPACITY": "1", "PLATFORM_MAX_BATCH_SIZE": "1"})
    key = await asyncio.to_thread(create_key, server, "client-overload")
    async with PredictionClient(predict_url(server), key, max_retries=0) as client:
        results = await asyncio.gather(*(client.predict("iris", [row]) for row in iris_rows(200)),
                                       return_exceptions=True)
    refused = [r for r in results if isinstance(r, RequestFailed)]
    assert refused and all(r.code == "overloaded" and r.retry_after_ms >= 1 for r in refused), results[:5]

    async with PredictionClient(predict_url(server), key, max_retries=100) as client:
        replies = await asyncio.gather(*(client.predict("iris", [row]) for row in iris_rows(200)))
        assert client.retries > 0
    assert [r["type"] for r in replies] == ["prediction"] * 200


def run_predict_script(*args):
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    return subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "predict.py"), *args], cwd="/",
                          env=env, capture_output=True, text=True, timeout=60)


def test_the_predict_script_prints_the_reply_or_the_error(server, keys):
    url = predict_url(server, "iris")
    done = run_predict_script("--url", url, "--key", keys["all"], "5.1", "3.5", "1.4", "0.2")
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["type"] == "prediction" and reply["outputs"][0]["label"] == "setosa"

    bad = run_predict_script("--url", url, "--key", keys["all"], "--encoding", "msgpack", "5.1", "3.5")
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["error"]["code"] == "invalid_input"

    refused = run_predict_script("--url", url, "--key", "wrong", "5.1", "3.5", "1.4", "0.2")
    assert refused.returncode == 1 and "4401" in refused.stderr
