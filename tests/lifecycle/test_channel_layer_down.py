"""A server process whose channel layer is down serves on, and follows the registry by its periodic reconcile."""

from __future__ import annotations

import json
import time

import numpy as np
import skops.io
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from websockets.sync.client import connect

from bench.servers import free_port
from tests.support.commands import manage, platform_env

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
RECONCILE_S = 1.0


def test_a_change_reaches_a_server_whose_redis_is_down_within_the_reconcile_interval(start_daphne, tmp_path):
    iris = load_iris()
    labels = np.asarray(iris.target_names)[iris.target]
    for number, c in ((1, 1.0), (2, 0.01)):
        skops.io.dump(LogisticRegression(C=c, max_iter=2000).fit(iris.data, labels), tmp_path / f"v{number}.skops")
    # Nothing listens on this port: every channel-layer call fails.
    env = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "PLATFORM_DATA_DIR": str(tmp_path / "data"),
           "PLATFORM_REQUIRE_API_KEY": "0", "PLATFORM_MODEL_RECONCILE_S": str(RECONCILE_S)}
    commands = platform_env(tmp_path / "data", env)
    manage("migrate", "--no-input", env=commands)
    manage("register_model", "iris", "--artifact", str(tmp_path / "v1.skops"), "--framework", "sklearn",
           "--activate", "--task", "classification", "--inputs", ",".join(FEATURES), "--outputs", "label",
           env=commands)
    server = start_daphne(env=env, demo_models=False)

    with connect(f"{server.ws_url}/ws/v1/predict/iris/") as ws:
        assert json.loads(ws.recv(timeout=5))["models"]["iris"]["version"] == 1
        ws.send(json.dumps({"id": "before", "inputs": [[6.0, 2.9, 4.5, 1.5]]}))
        assert json.loads(ws.recv(timeout=5))["version"] == 1
        manage("register_model", "iris", "--artifact", str(tmp_path / "v2.skops"), "--framework", "sklearn",
               "--activate", env=commands)
        committed = time.monotonic()  # an upper bound: the command's own announcement failed first
        pushed = json.loads(ws.recv(timeout=RECONCILE_S + 5))
        assert pushed["type"] == "models" and pushed["models"]["iris"]["version"] == 2, pushed
        assert time.monotonic() - committed < RECONCILE_S + 2
        ws.send(json.dumps({"id": "after", "inputs": [[6.0, 2.9, 4.5, 1.5]]}))
        reply = json.loads(ws.recv(timeout=5))
        assert reply["type"] == "prediction" and reply["version"] == 2, reply
    assert "Model-change messages are not reaching this process" in server.log_tail(200)
