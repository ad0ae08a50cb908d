"""The rules of what one model serves, given what it serves now and what the registry says (no model, no database)."""

from __future__ import annotations

from inference.reconcile import FAILED_IN_REGISTRY, converge, versions_to_load
from inference.registry import ACTIVE, FAILED, RETIRED, STAGED, Batching, RegisteredModel, RegisteredVersion
from inference.schema import InputSchema
from inference.served import ServedModel, ServedVersion

BATCHING = Batching(max_batch_size=8, max_delay_ms=0, queue_capacity=8)


class FakeBatcher:
    """Stands in for a loaded version's batcher: the rules only ask whether there is one."""


def registered(**statuses: str) -> RegisteredModel:
    """``registered(v1="staged", v2="active")``: a model whose versions have those statuses."""
    versions = {
        int(key[1:]): RegisteredVersion(int(key[1:]), status, is_active=status == ACTIVE, checksum=f"sum{key}")
        for key, status in statuses.items()
    }
    return RegisteredModel("iris", "classification", ("a", "b"), "label", BATCHING, versions)


def loaded(number: int) -> ServedVersion:
    entry = ServedVersion("iris", number, "classification", InputSchema(["a", "b"]), "label")
    entry.batcher = FakeBatcher()  # type: ignore[assignment]
    return entry


def serving(active: int | None, *entries: ServedVersion, standby: int | None = None) -> ServedModel:
    return ServedModel("iris", "classification", ["a", "b"], "label", active,
                       {entry.version: entry for entry in entries}, standby_version=standby)


def test_a_new_model_loads_its_active_version_and_nothing_else():
    model = registered(v1="staged", v2="active", v3="staged")
    assert versions_to_load(None, model) == [2]
    v2 = loaded(2)
    result = converge(None, model, new={2: v2})
    assert result.changed and result.dropped == ()
    assert result.served.active_version == 2
    assert result.served.versions == {2: v2}
    assert result.served.standby_version is None
    assert result.served.unloaded == {1, 3}


def test_the_replaced_version_becomes_the_standby():
    v1, v2 = loaded(1), loaded(2)
    model = registered(v1="staged", v2="active")
    assert versions_to_load(serving(1, v1), model) == [2]
    result = converge(serving(1, v1), model, new={2: v2})
    assert result.served.active_version == 2 and result.served.standby_version == 1
    assert result.served.versions == {1: v1, 2: v2}
    assert result.dropped == ()


def test_a_rollback_to_the_standby_loads_nothing_and_keeps_the_other_as_standby():
    v1, v2 = loaded(1), loaded(2)
    model = registered(v1="active", v2="staged")
    current = serving(2, v1, v2, standby=1)
    assert versions_to_load(current, model) == []
    result = converge(current, model)
    assert result.served.active_version == 1 and result.served.standby_version == 2
    assert result.served.versions[1] is v1 and result.served.versions[2] is v2
    assert result.dropped == ()


def test_at_most_one_standby_the_older_one_is_dropped():
    v1, v2, v3 = loaded(1), loaded(2), loaded(3)
    model = registered(v1="staged", v2="staged", v3="active")
    result = converge(serving(2, v1, v2, standby=1), model, new={3: v3})
    assert result.served.versions == {2: v2, 3: v3}
    assert result.served.standby_version == 2
    assert result.dropped == (v1,)
    assert result.served.unloaded == {1}


def test_a_version_that_failed_to_load_leaves_the_old_one_serving():
    v1 = loaded(1)
    model = registered(v1="staged", v2="active")
    result = converge(serving(1, v1), model, errors={2: "checksum mismatch"})
    assert result.served.active_version == 1
    assert result.served.versions[1] is v1
    assert result.served.versions[2].error == "checksum mismatch" and not result.served.versions[2].ready
    assert result.dropped == ()


def test_a_retired_version_is_dropped_and_unknown():
    v1, v2 = loaded(1), loaded(2)
    model = registered(v1=RETIRED, v2="active")
    result = converge(serving(2, v1, v2, standby=1), model)
    assert result.served.versions == {2: v2}
    assert result.served.standby_version is None
    assert 1 not in result.served.unloaded
    assert result.dropped == (v1,)


def test_retiring_the_active_version_without_a_replacement_leaves_no_active_version():
    v1, v2 = loaded(1), loaded(2)
    model = registered(v1=STAGED, v2=RETIRED)
    result = converge(serving(2, v1, v2, standby=1), model)
    assert result.served.active_version is None
    assert result.served.versions == {1: v1}
    assert result.dropped == (v2,)


def test_a_version_failed_in_the_registry_answers_with_the_reason():
    v1 = loaded(1)
    result = converge(serving(1, v1), registered(v1="active", v2=FAILED))
    assert result.served.versions[2].error == FAILED_IN_REGISTRY
    # Reconciled again, the same failed entry is kept: nothing changed.
    again = converge(result.served, registered(v1="active", v2=FAILED))
    assert not again.changed and again.served is result.served


def test_nothing_changed_keeps_the_same_object():
    v1 = loaded(1)
    current = serving(1, v1)
    result = converge(current, registered(v1="active"))
    assert not result.changed and result.served is current and result.dropped == ()


def test_a_version_that_failed_lately_is_not_loaded_again():
    model = registered(v1="staged", v2="active")
    assert versions_to_load(serving(1, loaded(1)), model, not_now={2}) == []
