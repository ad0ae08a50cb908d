"""Which version answers a request under a rollout: reproducible, in proportion, never a pinned request."""

from __future__ import annotations

import numpy as np
import pytest

from inference.batching import DynamicBatcher
from inference.rollout.plan import NO_ROLLOUT, Rollout
from inference.rollout.routing import Draw, in_share, request_key, route
from inference.schema import InputSchema
from inference.served import ServedModel, ServedVersion

ROWS = np.array([[1.0, 2.0, 3.0]])


def version(number: int, *, ready: bool = True) -> ServedVersion:
    entry = ServedVersion(name="m", version=number, task="regression", schema=InputSchema(["a", "b", "c"]),
                          outputs="y")
    if ready:
        entry.batcher = object.__new__(DynamicBatcher)  # routing only asks whether a batcher is there
    return entry


def model(rollout: Rollout, *, canary_ready: bool = True) -> ServedModel:
    return ServedModel(name="m", task="regression", inputs=["a", "b", "c"], outputs="y", active_version=1,
                       versions={1: version(1), 2: version(2, ready=canary_ready)}, rollout=rollout)


def test_the_key_depends_on_the_id_and_the_inputs_only():
    assert request_key("r1", ROWS) == request_key("r1", ROWS.copy())
    assert request_key("r1", ROWS) == request_key("r1", np.array([[1, 2, 3]]))  # ints arrive as the same floats
    assert request_key("r1", ROWS) != request_key("r2", ROWS)
    assert request_key("r1", ROWS) != request_key("r1", ROWS + 1e-9)
    assert request_key(1, ROWS) != request_key("1", ROWS)


@pytest.mark.parametrize("percent", [0.0, 1.0, 20.0, 50.0, 99.0, 100.0])
def test_a_share_takes_its_percentage_of_keys(percent):
    keys = [request_key(f"r{n}", ROWS) for n in range(20_000)]
    taken = sum(in_share(key, Draw.CANARY, percent) for key in keys) / len(keys) * 100
    assert abs(taken - percent) < 1.0, taken


def test_the_canary_and_the_shadow_draws_are_independent():
    keys = [request_key(f"r{n}", ROWS) for n in range(20_000)]
    both = sum(in_share(k, Draw.CANARY, 50) and in_share(k, Draw.SHADOW, 50) for k in keys) / len(keys)
    assert abs(both - 0.25) < 0.02, both


def test_the_canary_answers_its_share_and_the_same_requests_every_time():
    info = model(Rollout(canary_version=2, canary_weight_pct=20.0))
    chosen = [route(info, info.versions[1], ROWS, pinned=False, request_id=f"r{n}")[0].version for n in range(5000)]
    again = [route(info, info.versions[1], ROWS, pinned=False, request_id=f"r{n}")[0].version for n in range(5000)]
    assert chosen == again
    assert 0.18 < chosen.count(2) / len(chosen) < 0.22


def test_a_pinned_request_is_never_redirected_nor_shadowed():
    info = model(Rollout(canary_version=2, canary_weight_pct=100.0, shadow_version=2))
    for n in range(100):
        entry, key = route(info, info.versions[1], ROWS, pinned=True, request_id=f"r{n}")
        assert entry.version == 1 and key is None


def test_requests_the_canary_answers_are_not_shadowed_and_the_others_carry_their_key():
    info = model(Rollout(canary_version=2, canary_weight_pct=50.0, shadow_version=2))
    for n in range(200):
        entry, key = route(info, info.versions[1], ROWS, pinned=False, request_id=f"r{n}")
        assert (key is None) == (entry.version == 2)
        if key is not None:
            assert key == request_key(f"r{n}", ROWS)


def test_a_canary_not_loaded_here_answers_nothing():
    info = model(Rollout(canary_version=2, canary_weight_pct=100.0), canary_ready=False)
    assert all(route(info, info.versions[1], ROWS, pinned=False, request_id=n)[0].version == 1 for n in range(50))


def test_a_model_without_rollout_is_not_hashed():
    info = model(NO_ROLLOUT)
    assert route(info, info.versions[1], ROWS, pinned=False, request_id="r") == (info.versions[1], None)
