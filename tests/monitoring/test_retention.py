"""prune_predictions: deletes what is past the retention period, in batches, and nothing else."""

from __future__ import annotations

import io
import threading
import uuid
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from monitoring.models import PredictionRecord


def make_records(ages_days):
    now = timezone.now()
    PredictionRecord.objects.bulk_create(
        PredictionRecord(event_id=uuid.uuid4(), received_at=now - timedelta(days=age, minutes=1), model="iris",
                         version=1, request_id=f"age-{age}-{number}", rows=1, outcome="ok")
        for number, age in enumerate(ages_days)
    )


def prune(*args, **options):
    out = io.StringIO()
    call_command("prune_predictions", *args, stdout=out, **options)
    return out.getvalue()


@pytest.mark.django_db
def test_deletes_records_older_than_the_days_given_in_batches():
    make_records([0, 1, 29] + [30] * 4 + [31, 400] * 3)
    with CaptureQueriesContext(connection) as queries:
        output = prune("--days", "30", "--batch-size", "3")
    assert "Deleted 10 prediction records" in output
    remaining = sorted(PredictionRecord.objects.values_list("request_id", flat=True))
    assert [name.rsplit("-", 1)[0] for name in remaining] == ["age-0", "age-1", "age-29"]
    deletes = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("DELETE")]
    assert len(deletes) == 4, "10 records in batches of 3"


@pytest.mark.django_db
def test_the_setting_is_the_default(settings):
    make_records([5, 15])
    settings.PLATFORM_LOG_RETENTION_DAYS = 10
    assert "Deleted 1 prediction records" in prune()
    assert PredictionRecord.objects.count() == 1


@pytest.mark.django_db
def test_a_retention_of_zero_keeps_everything(settings):
    make_records([5, 5000])
    settings.PLATFORM_LOG_RETENTION_DAYS = 0
    assert "kept forever" in prune()
    assert PredictionRecord.objects.count() == 2


@pytest.mark.django_db
def test_dry_run_counts_and_deletes_nothing():
    make_records([1, 100, 200])
    assert "2 prediction records" in prune("--days", "50", "--dry-run")
    assert PredictionRecord.objects.count() == 3


@pytest.mark.django_db
@pytest.mark.parametrize(("option", "message"), [
    (["--days", "0"], "--days must be at least 1"),
    (["--days", "-3"], "--days must be at least 1"),
    (["--days", "3", "--batch-size", "0"], "--batch-size must be at least 1"),
])
def test_bad_options_are_refused(option, message):
    with pytest.raises(CommandError, match=message):
        prune(*option)


@pytest.mark.django_db
def test_pruning_starts_no_log_writer():
    make_records([100])
    before = set(threading.enumerate())
    prune("--days", "1")
    started = [thread.name for thread in set(threading.enumerate()) - before]
    assert not [name for name in started if name.startswith("prediction-log")]
