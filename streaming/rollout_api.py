"""The deployment API's rollout endpoints: shadow, canary, promote and abort, beside ``streaming.deploy_api``.

Routes (``platform_core/urls.py``), authenticated and answered like the
deployment API's others (``deploy_endpoint``: 401/403 for the caller, 404 for
an unknown model or version, 400 for a malformed request, 409 for a change
the versions' states forbid), audited with source ``api``:

- ``GET  /api/v1/models/<name>/rollout``: the rollout and the last hour's comparisons, per minute;
- ``POST /api/v1/models/<name>/rollout/shadow``: ``version`` (null removes the shadow), optional ``sample_pct``;
- ``POST /api/v1/models/<name>/rollout/canary``: ``version`` (null removes the canary), ``weight_pct``,
  optional ``max_error_pct`` and ``max_p99_ms`` (null: no limit);
- ``POST /api/v1/models/<name>/rollout/promote``: the canary (or the shadow) becomes the active version;
- ``POST /api/v1/models/<name>/rollout/abort``: no shadow, no canary.

The body is JSON or form fields. Every change reaches the server processes as a
swap does (``catalog_changed``, then each process reconciles).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone

from inference import deployment
from inference.exceptions import InvalidDeployment
from inference.models import MLModel
from inference.rollout import changes
from monitoring.comparisons.models import ShadowComparison

from .deploy_api import Deployer, _audit, _number, _params, deploy_endpoint, describe_version

#: How far back ``GET .../rollout`` lists comparisons.
COMPARISONS_LISTED = timedelta(hours=1)


def describe_rollout(model: MLModel) -> dict[str, Any]:
    """The model's rollout, as the API returns it."""
    return {
        "model": model.name,
        "active_version": model.active_version.version if model.active_version else None,
        "shadow": None if model.shadow_version is None else {
            "version": model.shadow_version, "sample_pct": model.shadow_sample_pct},
        "canary": None if model.canary_version is None else {
            "version": model.canary_version, "weight_pct": model.canary_weight_pct},
        "canary_limits": {"max_error_pct": model.canary_max_error_pct, "max_p99_ms": model.canary_max_p99_ms},
    }


def _comparisons(model: MLModel) -> list[dict[str, Any]]:
    since = timezone.now() - COMPARISONS_LISTED
    return [
        {"minute": row.minute.isoformat(), "version": row.primary_version, "shadow_version": row.shadow_version,
         "requests": row.requests, "rows": row.rows, "agreement": row.agreement, "mean_abs_diff": row.mean_abs_diff,
         "max_abs_diff": row.max_abs_diff, "primary_ms_mean": row.primary_ms_mean,
         "shadow_ms_mean": row.shadow_ms_mean, "failed": row.failed, "dropped": row.dropped}
        for row in ShadowComparison.objects.filter(model=model.name, minute__gte=since).order_by("minute")
    ]


def _version(params: dict[str, Any]) -> int | None:
    if "version" not in params:
        raise InvalidDeployment("Give the version number as 'version' (null to remove it).")
    return _number(params["version"], "version")


def _present(params: dict[str, Any], name: str) -> dict[str, Any]:
    """``{name: value}`` where the body gives one (an empty value: no limit), else nothing (left as it is)."""
    return {name: None if params[name] in (None, "") else params[name]} if name in params else {}


@deploy_endpoint("GET")
def rollout_detail(request: HttpRequest, deployer: Deployer, name: str) -> HttpResponse:
    model = deployment.get_model(name)
    return JsonResponse({**describe_rollout(model), "comparisons": _comparisons(model)})


@deploy_endpoint("POST")
def set_shadow(request: HttpRequest, deployer: Deployer, name: str) -> HttpResponse:
    params = _params(request)
    sample = params.get("sample_pct")
    model = changes.set_shadow(name, _version(params), sample_pct=100.0 if sample in (None, "") else sample,
                               **_audit(request, deployer))
    return JsonResponse(describe_rollout(model))


@deploy_endpoint("POST")
def set_canary(request: HttpRequest, deployer: Deployer, name: str) -> HttpResponse:
    params = _params(request)
    version = _version(params)
    if version is not None and params.get("weight_pct") in (None, ""):
        raise InvalidDeployment("Give the canary's share of requests as 'weight_pct', a percentage.")
    model = changes.set_canary(name, version, weight_pct=params.get("weight_pct") or 0.0,
                               **_present(params, "max_error_pct"), **_present(params, "max_p99_ms"),
                               **_audit(request, deployer))
    return JsonResponse(describe_rollout(model))


@deploy_endpoint("POST")
def promote(request: HttpRequest, deployer: Deployer, name: str) -> HttpResponse:
    previous = deployment.get_model(name).active_version
    version = changes.promote(name, **_audit(request, deployer))
    return JsonResponse({"model": name, "version": describe_version(version),
                         "previous_version": previous.version if previous else None})


@deploy_endpoint("POST")
def abort(request: HttpRequest, deployer: Deployer, name: str) -> HttpResponse:
    reason = str(_params(request).get("reason") or "")[:500]
    audit = _audit(request, deployer)
    model = changes.abort(name, reason=reason, actor=audit["actor"], source=audit["source"], address=audit["address"])
    return JsonResponse(describe_rollout(model))


__all__ = ["abort", "describe_rollout", "promote", "rollout_detail", "set_canary", "set_shadow"]
