"""The prediction log and the model versions in the admin: read-only, filters, search, export, a million rows."""

from __future__ import annotations

import csv
import io
import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from inference.models import MLModel, ModelVersion
from monitoring.models import PredictionRecord
from streaming.models import APIKey

CHANGELIST = "admin:monitoring_predictionrecord_changelist"
EXPORT = "admin:monitoring_predictionrecord_export"
NOW = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)


def record(request_id, *, model="iris", version=1, outcome="ok", api_key="alice", received_at=NOW, **fields):
    values = {
        "event_id": uuid.uuid4(), "received_at": received_at, "model": model, "version": version,
        "api_key": api_key, "request_id": request_id, "rows": 1, "inputs": [[5.1, 3.5, 1.4, 0.2]],
        "outputs": [{"label": "setosa"}] if outcome == "ok" else None, "outcome": outcome,
        "total_ms": 2.5, "queue_ms": 1.0, "inference_ms": 0.5, "batch_size": 4,
    }
    values.update(fields)
    return PredictionRecord.objects.create(**values)


def listed(response):
    return sorted(obj.request_id for obj in response.context["cl"].result_list)


@pytest.fixture
def registry(db):
    iris = MLModel.objects.create(name="iris", task="classification", inputs=["a", "b", "c", "d"], outputs="label")
    digits = MLModel.objects.create(name="digits", task="classification", inputs=["p0"], outputs="digit")
    for model, number in [(iris, 1), (iris, 2), (digits, 1)]:
        ModelVersion.objects.create(model=model, version=number, framework="sklearn", artifact=f"{model}/{number}",
                                    checksum="0" * 64, is_active=number == 1)
    for name in ("alice", "bob"):
        key = APIKey(name=name)
        key.set_new_key()
        key.save()


@pytest.fixture
def log_records(registry):
    record("a-1")
    record("a-2", outcome="invalid_input", error="row 1: expected 4 features, got 3")
    record("a-3", version=2, protocol="http")
    record("a-10", model="digits", api_key="bob", received_at=NOW - timedelta(days=40))
    record("b-1", model="digits", outcome="internal", api_key="", received_at=NOW - timedelta(days=400))
    record("=HYPERLINK(1)", outcome="invalid_request", model="")


# -- read-only for everyone ----------------------------------------------------------------


def test_superusers_may_view_but_not_add_change_or_delete(admin_client, log_records):
    obj = PredictionRecord.objects.get(request_id="a-1")
    assert admin_client.get(reverse(CHANGELIST)).status_code == 200
    assert admin_client.get(reverse("admin:monitoring_predictionrecord_add")).status_code == 403
    detail = admin_client.get(reverse("admin:monitoring_predictionrecord_change", args=[obj.pk]))
    assert detail.status_code == 200
    assert b'name="_save"' not in detail.content
    assert b"setosa" in detail.content
    assert admin_client.post(reverse("admin:monitoring_predictionrecord_change", args=[obj.pk]),
                             {"request_id": "forged"}).status_code == 403
    assert admin_client.post(reverse("admin:monitoring_predictionrecord_delete", args=[obj.pk]),
                             {"post": "yes"}).status_code == 403
    changelist = admin_client.get(reverse(CHANGELIST))
    assert b'name="action"' not in changelist.content, "no bulk actions, delete included"
    assert PredictionRecord.objects.get(pk=obj.pk).request_id == "a-1"


def test_the_log_has_only_a_view_permission(db):
    codenames = set(Permission.objects.filter(content_type__app_label="monitoring",
                                              content_type__model="predictionrecord")
                    .values_list("codename", flat=True))
    assert codenames == {"view_predictionrecord"}


def test_staff_need_the_view_permission(client, django_user_model, log_records):
    user = django_user_model.objects.create_user("auditor", password="pw", is_staff=True)
    client.force_login(user)
    assert client.get(reverse(CHANGELIST)).status_code == 403
    assert client.get(reverse(EXPORT)).status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="view_predictionrecord"))
    assert client.get(reverse(CHANGELIST)).status_code == 200
    assert client.get(reverse(EXPORT)).status_code == 200


# -- filters, search, drill-down ---------------------------------------------------------


@pytest.mark.parametrize(("query", "expected"), [
    ("", ["=HYPERLINK(1)", "a-1", "a-10", "a-2", "a-3", "b-1"]),
    ("model=digits", ["a-10", "b-1"]),
    ("version=iris:2", ["a-3"]),
    ("model=iris&version=iris:1", ["a-1", "a-2"]),
    ("outcome=invalid_input", ["a-2"]),
    ("api_key=bob", ["a-10"]),
    ("api_key=-", ["b-1"]),
    ("protocol__exact=http", ["a-3"]),
    ("protocol__exact=websocket&model=iris", ["a-1", "a-2"]),
    ("received_at__year=2025&received_at__month=2", ["a-10"]),
    ("received_at__year=2024", ["b-1"]),
])
def test_filters(admin_client, log_records, query, expected):
    response = admin_client.get(reverse(CHANGELIST) + "?" + query)
    assert response.status_code == 200
    assert listed(response) == sorted(expected)


def test_filter_choices_come_from_the_registry_and_the_protocol(admin_client, log_records):
    content = admin_client.get(reverse(CHANGELIST)).content.decode()
    for choice in ("?model=digits", "?version=iris%3A2", "?outcome__exact=rate_limited", "?api_key=bob", "?api_key=-"):
        assert choice in content, choice
    # Versions narrow to the chosen model.
    content = admin_client.get(reverse(CHANGELIST) + "?model=digits").content.decode()
    assert "version=digits%3A1" in content and "version=iris%3A2" not in content


def test_search_by_request_id_exact_or_prefix(admin_client, log_records):
    assert listed(admin_client.get(reverse(CHANGELIST) + "?q=a-1")) == ["a-1", "a-10"]
    assert listed(admin_client.get(reverse(CHANGELIST) + "?q=a-10")) == ["a-10"]
    assert listed(admin_client.get(reverse(CHANGELIST) + "?q=A-1")) == [], "ids are case-sensitive"
    assert listed(admin_client.get(reverse(CHANGELIST) + "?q=-1")) == [], "a prefix, not a substring"


def drill_down(client, query=""):
    """The titles of the date hierarchy's choices on the changelist page."""
    content = client.get(reverse(CHANGELIST) + query).content.decode()
    nav = re.search(r'<nav class="toplinks">(.*?)</nav>', content, re.S).group(1)
    return re.findall(r'<a href="[^"]*">([^<]+)</a>', nav)


def test_date_hierarchy_lists_only_periods_with_records(admin_client, log_records):
    assert drill_down(admin_client) == ["2024", "2025"]
    assert drill_down(admin_client, "?received_at__year=2025") == ["February 2025", "March 2025"]
    assert drill_down(admin_client, "?received_at__year=2025&received_at__month=3") == ["March 14"]
    assert drill_down(admin_client, "?received_at__year=2025&outcome=invalid_input") == ["March 2025"]


# -- export ------------------------------------------------------------------------------------


def read_csv(response):
    assert response.streaming
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    csv.field_size_limit(1 << 30)  # a request's inputs can be megabytes of JSON
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_export_holds_the_filtered_records_in_full(admin_client, log_records):
    big_inputs = [[float(i)] * 64 for i in range(1024)]
    record("big", inputs=big_inputs, rows=1024)
    rows = read_csv(admin_client.get(reverse(EXPORT) + "?model=iris&q=big"))
    assert len(rows) == 1
    assert rows[0]["rows"] == "1024"
    assert json.loads(rows[0]["inputs"]) == big_inputs

    rows = read_csv(admin_client.get(reverse(EXPORT) + "?outcome=invalid_input"))
    assert [row["request_id"] for row in rows] == ["a-2"]
    assert rows[0]["error"] == "row 1: expected 4 features, got 3"
    assert rows[0]["outputs"] == ""
    assert datetime.fromisoformat(rows[0]["received_at"]) == NOW


def test_export_keeps_the_changelist_order_and_defuses_formulas(admin_client, log_records):
    rows = read_csv(admin_client.get(reverse(EXPORT)))
    assert len(rows) == 6
    times = [row["received_at"] for row in rows]
    assert times == sorted(times, reverse=True)
    assert "'=HYPERLINK(1)" in [row["request_id"] for row in rows]


def test_the_changelist_links_to_the_export_of_what_it_shows(admin_client, log_records):
    content = admin_client.get(reverse(CHANGELIST) + "?outcome=ok").content.decode()
    assert re.search(r'href="/admin/monitoring/predictionrecord/export\.csv\?outcome=ok"', content)


@pytest.mark.django_db(transaction=True)
async def test_export_streams_under_asgi(async_client, admin_user):
    from asgiref.sync import sync_to_async

    await sync_to_async(lambda: [record(f"s-{i}") for i in range(2500)])()
    await async_client.aforce_login(admin_user)
    response = await async_client.get(reverse(EXPORT))
    assert response.streaming and response.is_async
    chunks = [chunk async for chunk in response.streaming_content]
    assert len(chunks) > 1, "written a chunk at a time, not all at once"
    assert b"".join(chunks).count(b"\n") == 2501


# -- at a million records ------------------------------------------------------------------------


def insert_million(cursor, count=1_000_000):
    started = int(datetime(2024, 6, 1, tzinfo=UTC).timestamp())
    cursor.execute(
        """
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < %s)
        INSERT INTO monitoring_predictionrecord
            (event_id, received_at, model, version, api_key, request_id, "rows", inputs, outputs, outcome,
             error, queue_ms, inference_ms, total_ms, batch_size)
        SELECT printf('%%032x', i), datetime(%s + i * 30, 'unixepoch'),
               CASE i %% 3 WHEN 0 THEN 'iris' WHEN 1 THEN 'digits' ELSE 'diabetes' END, 1 + i %% 2,
               CASE i %% 2 WHEN 0 THEN 'alice' ELSE 'bob' END, 'req-' || i, 1, '[[5.1, 3.5, 1.4, 0.2]]',
               '[{"label": "setosa"}]', CASE WHEN i %% 50 = 0 THEN 'invalid_input' ELSE 'ok' END,
               '', 1.0, 0.5, 2.0, 8
        FROM n
        """,
        [count, started],
    )


@pytest.fixture
def million(registry, django_db_blocker):
    if connection.vendor != "sqlite":
        pytest.skip("the million rows are generated with SQLite's SQL")
    with connection.cursor() as cursor:
        started = time.perf_counter()
        insert_million(cursor)
        cursor.execute("ANALYZE")
        print(f"inserted a million records in {time.perf_counter() - started:.1f} s")
    return 1_000_000


def test_a_page_at_a_million_records_is_fast_and_counts_nothing_whole(admin_client, million):
    assert PredictionRecord.objects.order_by("-pk").values_list("pk", flat=True).first() == million
    pages = {
        "first page": "",
        "a later page": "?p=50",
        "a model": "?model=iris",
        "a version": "?version=iris:2",
        "errors of a key": "?outcome=invalid_input&api_key=alice",
        "a search": "?q=req-99999",
        "a month": "?received_at__year=2024&received_at__month=9",
        "a day": "?received_at__year=2024&received_at__month=9&received_at__day=3",
        "this year": "?received_at__gte=2025-01-01+00%3A00%3A00%2B00%3A00",
    }
    timings = {}
    for what, query in pages.items():
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            response = admin_client.get(reverse(CHANGELIST) + query)
            timings[what] = time.perf_counter() - started
        assert response.status_code == 200, what
        counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
        assert all("LIMIT" in sql.upper() for sql in counts), f"{what}: an unbounded count: {counts}"
        assert timings[what] < 2.0, f"{what} took {timings[what]:.2f} s"
    print({what: round(seconds, 3) for what, seconds in timings.items()})

    first = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert "about 1000000 predictions" in first
    assert "req-1000000" in first, "the newest record comes first"
    assert len(admin_client.get(reverse(CHANGELIST)).context["cl"].result_list) == 100
    assert "more than 10000 predictions" in admin_client.get(reverse(CHANGELIST) + "?model=iris").content.decode()
    assert listed(admin_client.get(reverse(CHANGELIST) + "?q=req-999999")) == ["req-999999"]


def test_version_traffic_at_a_million_records(admin_client, million):
    started = time.perf_counter()
    response = admin_client.get(reverse("admin:inference_modelversion_changelist"))
    elapsed = time.perf_counter() - started
    assert response.status_code == 200
    counts = {str(version): (version.requests, version.errors) for version in response.context["cl"].result_list}
    # 1..1e6: i % 3 == 0 is iris, i % 2 picks the version, every 50th is an error.
    iris_v2 = [i for i in range(1, million + 1) if i % 3 == 0 and i % 2 == 1]
    assert counts["iris v2"] == (len(iris_v2), sum(1 for i in iris_v2 if i % 50 == 0))
    assert counts["digits v1"][0] == sum(1 for i in range(1, million + 1) if i % 3 == 1 and i % 2 == 0)
    print(f"model versions with traffic at a million records: {elapsed:.3f} s")
    assert elapsed < 5.0


# -- model and version admin --------------------------------------------------------------------


def test_each_version_shows_its_requests_and_errors(admin_client, log_records):
    response = admin_client.get(reverse("admin:inference_modelversion_changelist"))
    counts = {str(version): (version.requests, version.errors) for version in response.context["cl"].result_list}
    assert counts == {"iris v1": (2, 1), "iris v2": (1, 0), "digits v1": (2, 1)}
    content = response.content.decode()
    assert "requests" in content and "errors" in content

    iris = MLModel.objects.get(name="iris")
    page = admin_client.get(reverse("admin:inference_mlmodel_change", args=[iris.pk]))
    assert page.status_code == 200
    inline = page.context["inline_admin_formsets"][0]
    assert {form.original.version: (form.original.requests, form.original.errors)
            for form in inline if form.original is not None} == {
        1: (2, 1), 2: (1, 0),
    }
