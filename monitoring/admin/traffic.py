"""Requests and errors of each model version, from the prediction log, in the model registry's admin pages.

The registry (``inference``) knows nothing of the log; this module replaces
its version admin and inline with ones that add the traffic columns.
"""

from django.contrib import admin
from django.db.models import Count, IntegerField, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce

from inference.admin import MLModelAdmin, ModelVersionAdmin, ModelVersionInline
from inference.models import MLModel, ModelVersion

from ..models import Outcome, PredictionRecord
from .comparisons import ComparisonPanel


def with_traffic(versions):
    """``versions`` annotated with ``requests`` and ``errors``, counted from the prediction log.

    Each count reads only the log's (model, version, outcome) index entries of
    one version.
    """

    def counted(condition):
        records = (
            PredictionRecord.objects.filter(condition, model=OuterRef("model__name"), version=OuterRef("version"))
            .order_by()
            .values("model")
            .annotate(count=Count("*"))
            .values("count")
        )
        return Coalesce(Subquery(records, output_field=IntegerField()), 0)

    return versions.annotate(requests=counted(Q()), errors=counted(~Q(outcome=Outcome.OK)))


def _with_columns(names, *added, before="created_at"):
    names = list(names)
    at = names.index(before) if before in names else len(names)
    return names[:at] + list(added) + names[at:]


class TrafficColumns:
    """Requests and errors of each version, from the prediction log."""

    @admin.display(description="requests", ordering="requests")
    def requests(self, obj):
        return obj.requests

    @admin.display(description="errors", ordering="errors")
    def errors(self, obj):
        return obj.errors


class ModelVersionTrafficInline(TrafficColumns, ModelVersionInline):
    fields = _with_columns(ModelVersionInline.fields, "requests", "errors")
    readonly_fields = _with_columns(ModelVersionInline.readonly_fields, "requests", "errors", before="")

    def get_queryset(self, request):
        return with_traffic(super().get_queryset(request))


class MLModelTrafficAdmin(ComparisonPanel, MLModelAdmin):
    inlines = [ModelVersionTrafficInline]


class ModelVersionTrafficAdmin(TrafficColumns, ModelVersionAdmin):
    list_display = _with_columns(ModelVersionAdmin.list_display, "requests", "errors", before="checksum_short")
    readonly_fields = _with_columns(ModelVersionAdmin.readonly_fields, "requests", "errors")

    def get_queryset(self, request):
        return with_traffic(super().get_queryset(request))


def register(site=admin.site):
    """Show the registry's models with their traffic (``inference.admin`` registered them first)."""
    for model, model_admin in ((MLModel, MLModelTrafficAdmin), (ModelVersion, ModelVersionTrafficAdmin)):
        if site.is_registered(model):
            site.unregister(model)
        site.register(model, model_admin)
