"""The prediction record: its id is unique, its outcomes are the protocol's, its indexes are there."""

from __future__ import annotations

import uuid

import pytest
from django.db import IntegrityError, connection
from django.utils import timezone

from monitoring import metrics
from monitoring.models import Outcome, PredictionRecord


def make(**fields):
    values = {"event_id": uuid.uuid4(), "received_at": timezone.now(), "model": "iris", "version": 1,
              "request_id": "r-1", "rows": 1, "outcome": "ok"}
    values.update(fields)
    return PredictionRecord.objects.create(**values)


@pytest.mark.django_db
def test_an_event_id_is_stored_once():
    event_id = uuid.uuid4()
    make(event_id=event_id)
    with pytest.raises(IntegrityError):
        make(event_id=event_id, request_id="r-2")


def test_outcomes_are_ok_and_the_protocol_error_codes():
    assert set(Outcome.values) == metrics.OUTCOMES


@pytest.mark.django_db
def test_str_and_error_flag():
    ok = make(request_id="c-17")
    failed = make(request_id="", outcome="invalid_json", model="", version=None)
    assert str(ok) == "c-17 (iris v1, ok)"
    assert str(failed) == "- (? v?, invalid_json)"
    assert not ok.is_error and failed.is_error


@pytest.mark.django_db
def test_the_admin_filters_and_counts_have_their_indexes():
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, PredictionRecord._meta.db_table)
    indexed = {tuple(info["columns"]) for info in constraints.values() if info["index"] or info["unique"]}
    for columns in [("event_id",), ("received_at",), ("model", "received_at"), ("outcome", "received_at"),
                    ("api_key", "received_at"), ("model", "version", "outcome"), ("request_id",)]:
        assert columns in indexed, columns
