"""Shadow and canary versions on a real server: what the clients get, and what the registry and the log keep.

One daphne process (two for the canary's reproducibility across processes),
one PostgreSQL database, one Redis; versions registered and rolled out with
``manage.py register_model`` and ``manage.py rollout`` as an operator would.
The versions are logistic regressions on the first input, so which inputs they
disagree on is known: version 1 says ``high`` above 0, version 2 above 0.5,
and they disagree on ``x = 0.25`` only. Version 3 passes validation but
raises on every input it was not fitted on (a one-hot encoder that refuses
unknown categories), as a broken model would in production.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import Counter
from pathlib import Path

import psycopg
import pytest
import skops.io
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder
from websockets.asyncio.client import connect

from tests.support.commands import manage, platform_env
from tests.support.postgres_server import throwaway_database

FEATURES = ["x", "y", "z"]
AGREE = ([-1.0, 0.0, 0.0], [1.0, 0.0, 0.0])
DISAGREE = [0.25, 0.0, 0.0]
#: Requests in flight on one connection (the server allows PLATFORM_MAX_IN_FLIGHT, 256).
WINDOW = 128


def stump(threshold: float) -> LogisticRegression:
    """``high`` above ``threshold`` on the first input (points placed symmetrically about it), else ``low``."""
    x = [[threshold - 1.0, 0, 0], [threshold - 0.1, 0, 0], [threshold + 0.1, 0, 0], [threshold + 1.0, 0, 0]]
    return LogisticRegression(C=100.0).fit(x, ["low", "low", "high", "high"])


def raising() -> object:
    """Answers the rows of zeros validation and warm-up send, and raises on anything else."""
    x = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    return make_pipeline(OneHotEncoder(handle_unknown="error"), LogisticRegression()).fit(x, ["low", "high"])


def expected_label(version: int, row: list[float]) -> str:
    return "high" if row[0] > (0.0 if version == 1 else 0.5) else "low"


@pytest.fixture(scope="module")
def platform(postgres_url, redis_url, tmp_path_factory):
    """A registry with the model ``m`` (v1 active, v2 and v3 staged) and the environment of its processes.

    Shared by the module's tests, in their order: the shadow's leaves v1 active, the canary's starts from there.
    """
    tmp_path = tmp_path_factory.mktemp("rollout")
    with throwaway_database(postgres_url) as database_url:
        env = {"REDIS_URL": redis_url, "DATABASE_URL": database_url, "PLATFORM_DATA_DIR": str(tmp_path / "data"),
               "PLATFORM_REQUIRE_API_KEY": "0", "PLATFORM_SHADOW_FLUSH_S": "1"}
        commands = platform_env(tmp_path / "data", env)
        manage("migrate", "--no-input", env=commands)
        for number, estimator in ((1, stump(0.0)), (2, stump(0.5)), (3, raising())):
            path = tmp_path / f"m-v{number}.skops"
            skops.io.dump(estimator, path)
            manage("register_model", "m", "--artifact", str(path), "--framework", "sklearn",
                   *(["--activate"] if number == 1 else []), "--task", "classification", "--inputs", ",".join(FEATURES),
                   "--outputs", "label", env=commands)
        yield env, commands, database_url


def rollout(commands: dict[str, str], *args: str) -> None:
    manage("rollout", "m", *args, env=commands)


def wait_loaded(server, version: int, *, loaded: bool = True, timeout_s: float = 15.0) -> None:
    """Until the server has ``version`` of ``m`` loaded (or not)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{server.url}/healthz", timeout=5) as response:
            if (f"m:{version}" in json.loads(response.read())["loaded"]) == loaded:
                return
        time.sleep(0.1)
    raise AssertionError(f"v{version} was {'not ' if loaded else ''}loaded within {timeout_s} s")


async def ask(url: str, requests: list[dict]) -> dict[str, list[dict]]:
    """Send ``requests`` on one connection, at most WINDOW in flight; every reply, by request id."""
    replies: dict[str, list[dict]] = {}
    room = asyncio.Semaphore(WINDOW)
    async with connect(f"{url}/ws/v1/predict/m/", max_size=None) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"

        async def read() -> None:
            while sum(map(len, replies.values())) < len(requests):
                message = json.loads(await ws.recv())
                if message["type"] in ("prediction", "error"):
                    replies.setdefault(message.get("id"), []).append(message)
                    room.release()

        reader = asyncio.create_task(read())
        for request in requests:
            await room.acquire()
            await ws.send(json.dumps(request))
        await asyncio.wait_for(reader, 60)
    return replies


def query(database_url: str, sql: str, *args) -> list[tuple]:
    with psycopg.connect(database_url) as connection:
        return connection.execute(sql, args).fetchall()


def comparison(database_url: str, shadow: int) -> tuple[int, int, int, int, int]:
    (row,) = query(database_url, "SELECT COALESCE(SUM(requests), 0), COALESCE(SUM(rows), 0), "
                   "COALESCE(SUM(agreed_rows), 0), COALESCE(SUM(failed), 0), COALESCE(SUM(dropped), 0) "
                   "FROM monitoring_shadowcomparison WHERE model = 'm' AND primary_version = 1 "
                   "AND shadow_version = %s", shadow)
    return tuple(int(value) for value in row)  # type: ignore[return-value]


def wait_for(check, timeout_s: float = 15.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


async def test_a_shadow_is_compared_on_every_request_and_a_failing_one_changes_nothing(platform, start_daphne):
    env, commands, database_url = platform
    server = start_daphne(env=env, demo_models=False)
    rollout(commands, "--shadow", "2")
    wait_loaded(server, 2)

    rows = [DISAGREE if n % 4 == 0 else AGREE[n % 2] for n in range(800)]
    replies = await ask(server.ws_url, [{"id": f"s{n}", "inputs": [row]} for n, row in enumerate(rows)])
    for n, row in enumerate(rows):
        (reply,) = replies[f"s{n}"]
        assert reply["type"] == "prediction" and reply["version"] == 1, reply
        assert reply["outputs"][0]["label"] == expected_label(1, row)
    # Exactly one comparison per request, and the agreement the stumps' thresholds give: 3 in 4.
    counted = wait_for(lambda: comparison(database_url, 2)[0] >= 800 and comparison(database_url, 2))
    assert counted == (800, 800, 600, 0, 0), counted
    samples = query(database_url, "SELECT inputs, primary_output, shadow_output FROM monitoring_shadowdisagreement "
                    "WHERE model = 'm' AND shadow_version = 2")
    assert samples and all(inputs == DISAGREE for inputs, _, _ in samples)
    assert all((p["label"], s["label"]) == ("high", "low") for _, p, s in samples)
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as response:
        exposed = response.read().decode()
    assert 'platform_shadow_agreed_rows_total{model="m",shadow_version="2",version="1"} 600.0' in exposed

    # A shadow that raises on every call: the clients see exactly what they saw before.
    rollout(commands, "--shadow", "3")
    wait_loaded(server, 3)
    rows = [AGREE[n % 2] for n in range(300)]
    replies = await ask(server.ws_url, [{"id": f"f{n}", "inputs": [row]} for n, row in enumerate(rows)])
    assert all(len(replies[f"f{n}"]) == 1 and replies[f"f{n}"][0]["type"] == "prediction"
               and replies[f"f{n}"][0]["outputs"][0]["label"] == expected_label(1, row) for n, row in enumerate(rows))
    failed = wait_for(lambda: sum(comparison(database_url, 3)[3:]) >= 300 and comparison(database_url, 3))
    assert failed[0] == 0 and failed[3] + failed[4] == 300 and failed[3] > 0, failed
    assert wait_for(lambda: query(database_url, "SELECT COUNT(*) FROM monitoring_predictionrecord "
                                  "WHERE request_id LIKE 'f%%'")[0][0] == 300)
    logged = query(database_url, "SELECT outcome, version, COUNT(*) FROM monitoring_predictionrecord "
                   "WHERE request_id LIKE 'f%%' GROUP BY outcome, version")
    assert logged == [("ok", 1, 300)]


async def test_a_canary_answers_its_share_reproducibly_and_promotion_and_abort_drop_nothing(
        platform, start_daphne):
    env, commands, database_url = platform
    manage("rollout", "m", "--abort", env=commands, check=False)  # the shadow the test before left
    servers = [start_daphne(env=env, demo_models=False) for _ in range(2)]
    rollout(commands, "--canary", "2", "--weight", "20")
    for server in servers:
        wait_loaded(server, 2)

    requests = [{"id": f"c{n}", "inputs": [DISAGREE]} for n in range(3000)]
    first = await ask(servers[0].ws_url, requests)
    chosen = {rid: replies[0]["version"] for rid, replies in first.items()}
    share = Counter(chosen.values())[2] / len(requests)
    assert 0.17 <= share <= 0.23, share
    for (reply,) in first.values():
        assert reply["outputs"][0]["label"] == expected_label(reply["version"], DISAGREE)
    # The same requests, again, to the other process: answered by the same versions.
    again = await ask(servers[1].ws_url, requests)
    assert {rid: replies[0]["version"] for rid, replies in again.items()} == chosen
    pinned = await ask(servers[0].ws_url, [{**r, "id": f"p{n}", "version": 1} for n, r in enumerate(requests[:500])])
    assert {replies[0]["version"] for replies in pinned.values()} == {1}
    # The prediction log says which version served each request.
    assert wait_for(lambda: query(database_url, "SELECT COUNT(*) FROM monitoring_predictionrecord "
                                  "WHERE request_id LIKE 'c%%'")[0][0] == 6000)
    logged = dict(query(database_url, "SELECT version, COUNT(*) FROM monitoring_predictionrecord "
                        "WHERE request_id LIKE 'c%%' GROUP BY version"))
    assert logged == {2: 2 * Counter(chosen.values())[2], 1: 2 * Counter(chosen.values())[1]}

    # Promotion and abort while clients stream: every request is answered once, none with an error.
    stop = asyncio.Event()

    async def stream(url: str, name: str) -> tuple[int, dict[str, list[dict]]]:
        sent = 0
        batches: dict[str, list[dict]] = {}
        while not stop.is_set():
            batch = [{"id": f"{name}-{sent + n}", "inputs": [AGREE[n % 2]]} for n in range(50)]
            batches.update(await ask(url, batch))
            sent += len(batch)
        return sent, batches

    clients = [asyncio.create_task(stream(server.ws_url, f"l{i}")) for i, server in enumerate(servers)]
    await asyncio.sleep(1.0)
    await asyncio.to_thread(rollout, commands, "--promote")
    await asyncio.sleep(2.0)
    await asyncio.to_thread(rollout, commands, "--canary", "1", "--weight", "50")
    await asyncio.sleep(2.0)
    await asyncio.to_thread(rollout, commands, "--abort")
    await asyncio.sleep(1.0)
    stop.set()
    results = await asyncio.wait_for(asyncio.gather(*clients), 60)
    versions = Counter()
    for sent, replies in results:
        assert sent > 0 and len(replies) == sent
        for rid, answers in replies.items():
            assert len(answers) == 1 and answers[0]["type"] == "prediction", (rid, answers)
            versions[answers[0]["version"]] += 1
    assert set(versions) == {1, 2}, versions
    events = [action for (action,) in query(database_url, "SELECT e.action FROM inference_deploymentevent e "
                                            "JOIN inference_mlmodel m ON m.id = e.model_id WHERE m.name = 'm' "
                                            "AND e.action NOT IN ('registered') ORDER BY e.id")]
    assert events[-5:] == ["canary_set", "activated", "promoted", "canary_set", "aborted"], events


def test_the_version_files(tmp_path: Path):
    """The stumps disagree where the docstring says, and the broken version raises where it should."""
    low, high = stump(0.0), stump(0.5)
    assert [low.predict([row])[0] for row in (*AGREE, DISAGREE)] == ["low", "high", "high"]
    assert [high.predict([row])[0] for row in (*AGREE, DISAGREE)] == ["low", "high", "low"]
    with pytest.raises(ValueError):
        raising().predict([AGREE[0]])
