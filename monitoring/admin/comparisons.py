"""The shadow comparisons in the admin: per-minute rows and sampled disagreements, filterable, exported as CSV.

Read-only, like the prediction log. The model's page in the registry shows
its last hour of comparisons (``ComparisonPanel``, mixed into the model admin
by ``monitoring.admin.traffic``).
"""

import csv
import io
import json
from datetime import timedelta

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.urls import path, reverse
from django.utils import timezone

from ..comparisons.models import ShadowComparison, ShadowDisagreement

#: How far back the model's page lists comparisons.
PANEL_SPAN = timedelta(hours=1)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class ComparisonPanel:
    """Adds the model's last hour of comparisons to its admin page (``comparisons`` in the context)."""

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = self.get_object(request, object_id)
        if obj is not None and request.user.has_perm("monitoring.view_shadowcomparison"):
            since = timezone.now() - PANEL_SPAN
            extra_context = {**(extra_context or {}), "comparisons": {
                "rows": list(ShadowComparison.objects.filter(model=obj.name, minute__gte=since)),
                "changelist_url": reverse("admin:monitoring_shadowcomparison_changelist") + f"?model={obj.name}",
                "disagreements_url": reverse("admin:monitoring_shadowdisagreement_changelist") + f"?model={obj.name}",
            }}
        return super().change_view(request, object_id, form_url, extra_context)


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value  # a spreadsheet must not run a model name as a formula
    return value


class ReadOnlyExportAdmin(admin.ModelAdmin):
    """An audit table: viewed, filtered and exported (``export.csv`` follows the changelist's filters), not edited."""

    csv_columns: list = []
    actions = None

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_urls(self):
        export = path("export.csv", self.admin_site.admin_view(self.export_view),
                      name=f"{self.opts.app_label}_{self.opts.model_name}_export")
        return [export, *super().get_urls()]

    def export_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        rows = self.get_changelist_instance(request).queryset
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(self.csv_columns)
        for values in rows.values_list(*self.csv_columns).iterator(chunk_size=1000):
            writer.writerow([_cell(value) for value in values])
        response = HttpResponse(out.getvalue(), content_type="text/csv; charset=utf-8")
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        response["Content-Disposition"] = f'attachment; filename="{self.opts.model_name}-{stamp}.csv"'
        return response


@admin.register(ShadowComparison)
class ShadowComparisonAdmin(ReadOnlyExportAdmin):
    list_display = ["minute", "model", "primary_version", "shadow_version", "requests", "agreement_pct",
                    "mean_abs_diff_display", "max_abs_diff", "primary_ms_mean_display", "shadow_ms_mean_display",
                    "failed", "dropped"]
    list_filter = ["model", "primary_version", "shadow_version", ("minute", admin.DateFieldListFilter)]
    date_hierarchy = "minute"
    csv_columns = ["minute", "model", "primary_version", "shadow_version", "requests", "rows", "agreed_rows",
                   "sum_abs_diff", "max_abs_diff", "primary_ms_sum", "primary_ms_max", "shadow_ms_sum",
                   "shadow_ms_max", "failed", "dropped"]
    change_list_template = "admin/monitoring/comparisons/change_list.html"

    @admin.display(description="agreement")
    def agreement_pct(self, obj):
        return "—" if obj.agreement is None else f"{100 * obj.agreement:.1f}%"

    @admin.display(description="mean |Δ|")
    def mean_abs_diff_display(self, obj):
        return "—" if obj.mean_abs_diff is None else f"{obj.mean_abs_diff:.4g}"

    @admin.display(description="serving ms")
    def primary_ms_mean_display(self, obj):
        return "—" if obj.primary_ms_mean is None else f"{obj.primary_ms_mean:.2f}"

    @admin.display(description="shadow ms")
    def shadow_ms_mean_display(self, obj):
        return "—" if obj.shadow_ms_mean is None else f"{obj.shadow_ms_mean:.2f}"


@admin.register(ShadowDisagreement)
class ShadowDisagreementAdmin(ReadOnlyExportAdmin):
    list_display = ["at", "model", "primary_version", "shadow_version", "abs_diff", "inputs", "primary_output",
                    "shadow_output"]
    list_filter = ["model", "primary_version", "shadow_version", ("at", admin.DateFieldListFilter)]
    date_hierarchy = "at"
    csv_columns = ["at", "model", "primary_version", "shadow_version", "abs_diff", "inputs", "primary_output",
                   "shadow_output"]
    change_list_template = "admin/monitoring/comparisons/change_list.html"
