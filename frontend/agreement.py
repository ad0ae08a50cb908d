"""The dashboard's shadow-agreement chart: the last hour of each shadow's agreement, per minute, as JSON."""

from __future__ import annotations

from datetime import timedelta

from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache

from monitoring.comparisons.models import ShadowComparison

from .views import staff_member_required

#: How far back the chart reaches.
AGREEMENT_SPAN = timedelta(hours=1)


@never_cache
@staff_member_required
def agreement(request):
    """Per model and version pair: each minute's agreement (percent of compared rows) and requests compared."""
    since = timezone.now() - AGREEMENT_SPAN
    series: dict[str, dict] = {}
    rows = ShadowComparison.objects.filter(minute__gte=since, rows__gt=0).order_by("minute").values_list(
        "model", "primary_version", "shadow_version", "minute", "rows", "agreed_rows", "requests")
    for model, primary, shadow, minute, compared, agreed, requests in rows:
        label = f"{model} v{primary} vs v{shadow}"
        points = series.setdefault(label, {"label": label, "points": []})["points"]
        points.append({"t": int(minute.timestamp() * 1000), "agreement": 100.0 * agreed / compared,
                       "requests": requests})
    return JsonResponse({"series": list(series.values())})
