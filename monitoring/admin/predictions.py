"""The prediction log in the admin: an audit trail, read-only, fast at millions of records.

Nothing on a changelist page reads the whole table: the paginator counts at
most ``CappedCountPaginator.count_limit`` records, the filters take their
choices from the small registry tables and the protocol's fixed list of
outcomes, the date drill-down probes the time index period by period, and
the request-id search is an index range. The CSV export streams the filtered
changelist without holding it in memory.
"""

import csv
import json
from datetime import datetime, timedelta

from asgiref.sync import sync_to_async
from django.apps import apps
from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Max, Min, QuerySet, TextField
from django.db.models.functions import Cast
from django.http import HttpResponseRedirect, StreamingHttpResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html

from ..models import PredictionRecord

# The detail page shows this much of a request's inputs and outputs; the CSV
# export has them in full.
JSON_DISPLAY_CHARS = 20_000


class CappedCountPaginator(Paginator):
    """A paginator that counts at most ``count_limit`` records.

    ``COUNT(*)`` over a million rows takes longer than the rest of the page;
    past the limit the page says "more than" (or, for the whole table, an
    estimate the database keeps anyway), and later records are reached by
    filtering rather than by paging that deep.
    """

    count_limit = 10_000

    @cached_property
    def _counted(self):
        return self.object_list.order_by()[: self.count_limit + 1].count()

    @cached_property
    def count(self):
        return min(self._counted, self.count_limit)

    @property
    def capped(self):
        return self._counted > self.count_limit

    @cached_property
    def estimate(self):
        """The approximate size of the whole table, when the list is unfiltered and past the limit."""
        if not self.capped or self.object_list.query.where:
            return None
        return estimated_count(self.object_list)


def estimated_count(queryset):
    """The number of rows in the queryset's table, from statistics or the id range: no scan."""
    model = queryset.model
    connection = connections[queryset.db]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                           [model._meta.db_table])
            row = cursor.fetchone()
        if row and row[0] > 0:
            return row[0]
    unordered = model._default_manager.using(queryset.db).order_by()
    first = unordered.order_by("pk").values_list("pk", flat=True).first()
    last = unordered.order_by("-pk").values_list("pk", flat=True).first()
    return 0 if first is None else last - first + 1


class DrillDownQuerySet(QuerySet):
    """The changelist's queryset, with the date hierarchy's queries answered from the time index.

    Django's date hierarchy truncates the time of every matching row to find
    the years, months or days that hold records; here each candidate period
    is one indexed ``EXISTS`` instead, and the first and last times are two
    ``ORDER BY ... LIMIT 1`` lookups rather than one ``MIN``/``MAX`` scan.
    """

    def aggregate(self, *args, **kwargs):
        first, last = kwargs.get("first"), kwargs.get("last")
        if not args and len(kwargs) == 2 and isinstance(first, Min) and isinstance(last, Max):
            field = getattr(first.source_expressions[0], "name", None)
            if field is not None and field == getattr(last.source_expressions[0], "name", None):
                return {"first": self._edge(field), "last": self._edge(f"-{field}")}
        return super().aggregate(*args, **kwargs)

    def _edge(self, ordering):
        return self.order_by(ordering).values_list(ordering.lstrip("-"), flat=True).first()

    def datetimes(self, field_name, kind, order="ASC", tzinfo=None):
        first, last = self._edge(field_name), self._edge(f"-{field_name}")
        if first is None:
            return []
        zone = tzinfo or timezone.get_current_timezone()
        periods = []
        start = _truncate(timezone.localtime(first, zone), kind)
        end_of_range = timezone.localtime(last, zone)
        while start <= end_of_range:
            following = _next_period(start, kind)
            lookup = {f"{field_name}__gte": start, f"{field_name}__lt": following}
            if self.filter(**lookup).exists():
                periods.append(start)
            start = following
        return periods if order == "ASC" else periods[::-1]


def _truncate(moment, kind):
    if kind == "year":
        moment = moment.replace(month=1, day=1)
    elif kind == "month":
        moment = moment.replace(day=1)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def _next_period(start, kind):
    naive = timezone.make_naive(start, start.tzinfo)
    if kind == "year":
        naive = naive.replace(year=naive.year + 1)
    elif kind == "month":
        naive = (naive.replace(day=1) + timedelta(days=32)).replace(day=1)
    else:
        naive = naive + timedelta(days=1)
    return timezone.make_aware(naive, start.tzinfo)


class PredictionChangeList(ChangeList):
    def get_queryset(self, request, exclude_parameters=None):
        queryset = super().get_queryset(request, exclude_parameters)
        # A page of a hundred requests must not load a hundred sets of inputs.
        queryset = queryset.defer("inputs", "outputs")
        return DrillDownQuerySet(model=queryset.model, query=queryset.query, using=queryset._db,
                                 hints=queryset._hints)


# -- filters whose choices come from small tables, never from the log ------------------


class ModelFilter(admin.SimpleListFilter):
    title = "model"
    parameter_name = "model"

    def lookups(self, request, model_admin):
        MLModel = apps.get_model("inference", "MLModel")
        return [(name, name) for name in MLModel.objects.order_by("name").values_list("name", flat=True)]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(model=self.value())
        return queryset


class VersionFilter(admin.SimpleListFilter):
    title = "version"
    parameter_name = "version"

    def lookups(self, request, model_admin):
        ModelVersion = apps.get_model("inference", "ModelVersion")
        versions = ModelVersion.objects.order_by("model__name", "version")
        model = request.GET.get(ModelFilter.parameter_name)
        if model:
            versions = versions.filter(model__name=model)
        return [
            (f"{name}:{number}", f"{name} v{number}")
            for name, number in versions.values_list("model__name", "version")
        ]

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        name, _, number = self.value().rpartition(":")
        try:
            return queryset.filter(model=name, version=int(number))
        except ValueError:
            raise IncorrectLookupParameters(f"{self.value()!r} is not a model version.") from None


class APIKeyFilter(admin.SimpleListFilter):
    title = "API key"
    parameter_name = "api_key"
    NONE = "-"

    def lookups(self, request, model_admin):
        APIKey = apps.get_model("streaming", "APIKey")
        names = APIKey.objects.order_by("name").values_list("name", flat=True)
        return [*((name, name) for name in names), (self.NONE, "(no key)")]

    def queryset(self, request, queryset):
        if self.value() == self.NONE:
            return queryset.filter(api_key="")
        if self.value():
            return queryset.filter(api_key=self.value())
        return queryset


# -- CSV export ------------------------------------------------------------------------------

CSV_COLUMNS = [
    ("received_at", "received_at"), ("event_id", "event_id"), ("request_id", "request_id"),
    ("model", "model"), ("version", "version"), ("api_key", "api_key"), ("outcome", "outcome"),
    ("error", "error"), ("rows", "rows"), ("queue_ms", "queue_ms"), ("inference_ms", "inference_ms"),
    ("total_ms", "total_ms"), ("batch_size", "batch_size"), ("protocol", "protocol"), ("inputs", "inputs_json"),
    ("outputs", "outputs_json"),
]
# Text a client chose (ids, names, messages), which a spreadsheet must not run as a formula.
_CLIENT_TEXT = {"request_id", "model", "api_key", "error"}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class _Echo:
    def write(self, value):
        return value


def _csv_value(name, value):
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if name in _CLIENT_TEXT and isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_chunks(queryset, rows_per_chunk=1000):
    """The queryset as CSV text, a chunk of rows at a time."""
    writer = csv.writer(_Echo())
    names = [name for name, _ in CSV_COLUMNS]
    queryset = queryset.annotate(
        inputs_json=Cast("inputs", TextField()), outputs_json=Cast("outputs", TextField())
    ).values_list(*[source for _, source in CSV_COLUMNS])
    yield writer.writerow(names)
    lines = []
    for row in queryset.iterator(chunk_size=rows_per_chunk):
        values = [_csv_value(name, value) for name, value in zip(names, row, strict=True)]
        lines.append(writer.writerow(values))
        if len(lines) >= rows_per_chunk:
            yield "".join(lines)
            lines = []
    if lines:
        yield "".join(lines)


async def _asynchronously(chunks):
    # Under ASGI a synchronous iterator would be read to the end into memory
    # before the first byte goes out; step it in the thread that opened the
    # database cursor instead.
    step = sync_to_async(lambda: next(chunks, None), thread_sensitive=True)
    while (chunk := await step()) is not None:
        yield chunk


# -- the admin -----------------------------------------------------------------------------------


@admin.register(PredictionRecord)
class PredictionRecordAdmin(admin.ModelAdmin):
    list_display = ["received_at", "request_id", "model", "version", "api_key", "outcome", "protocol", "rows",
                    "total_ms", "batch_size"]
    list_display_links = ["received_at", "request_id"]
    list_filter = [ModelFilter, VersionFilter, "outcome", "protocol", APIKeyFilter,
                   ("received_at", admin.DateFieldListFilter)]
    search_fields = ["request_id"]
    search_help_text = "Request id: exact, or the beginning of one."
    date_hierarchy = "received_at"
    ordering = ["-received_at", "-id"]
    # Sorting a million rows by anything but the indexed time would be a full sort.
    sortable_by = ["received_at"]
    paginator = CappedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    actions = None
    list_per_page = 100
    fields = ["event_id", "received_at", "request_id", "model", "version", "api_key", "outcome", "protocol",
              "error", "rows", "queue_ms", "inference_ms", "total_ms", "batch_size", "inputs_display",
              "outputs_display"]
    readonly_fields = fields

    # -- an audit trail is not edited, by anyone ---------------------------------------

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    # -- the changelist ------------------------------------------------------------------

    def get_changelist(self, request, **kwargs):
        return PredictionChangeList

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        if connections[queryset.db].vendor == "sqlite":
            # SQLite's LIKE ignores case and no index serves it; a range on the
            # column's byte order is the same prefix match, on the index.
            upper = _prefix_upper_bound(term)
            matches = queryset.filter(request_id__gte=term)
            if upper is not None:
                matches = matches.filter(request_id__lt=upper)
            return matches, False
        # PostgreSQL: LIKE 'term%' on the varchar_pattern_ops index.
        return queryset.filter(request_id__startswith=term), False

    @admin.display(description="inputs")
    def inputs_display(self, obj):
        return _json_block(obj.inputs)

    @admin.display(description="outputs")
    def outputs_display(self, obj):
        return _json_block(obj.outputs)

    # -- CSV export of the filtered changelist --------------------------------------------

    def get_urls(self):
        export = path(
            "export.csv",
            self.admin_site.admin_view(self.export_view),
            name=f"{self.opts.app_label}_{self.opts.model_name}_export",
        )
        return [export, *super().get_urls()]

    def export_view(self, request):
        """Every record of the changelist as filtered, searched and ordered, as a streamed CSV file."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            changelist = self.get_changelist_instance(request)
        except IncorrectLookupParameters:
            return HttpResponseRedirect(reverse("admin:monitoring_predictionrecord_changelist") + "?e=1")
        chunks = csv_chunks(changelist.queryset)
        content = _asynchronously(chunks) if isinstance(request, ASGIRequest) else chunks
        response = StreamingHttpResponse(content, content_type="text/csv; charset=utf-8")
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        response["Content-Disposition"] = f'attachment; filename="predictions-{stamp}.csv"'
        return response


def _prefix_upper_bound(prefix):
    """The smallest string greater than every string starting with ``prefix`` (None: no bound)."""
    characters = list(prefix)
    while characters:
        following = ord(characters.pop()) + 1
        if 0xD800 <= following <= 0xDFFF:  # surrogates are not characters
            following = 0xE000
        if following <= 0x10FFFF:
            return "".join(characters) + chr(following)
    return None


def _json_block(value):
    if value is None:
        return "—"
    text = json.dumps(value, indent=1, ensure_ascii=False)
    if len(text) > JSON_DISPLAY_CHARS:
        return format_html(
            "<pre>{}</pre><p>… {} characters in all; the CSV export has them in full.</p>",
            text[:JSON_DISPLAY_CHARS], len(text),
        )
    return format_html("<pre>{}</pre>", text)
