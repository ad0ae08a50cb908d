"""``/metrics``: the platform's Prometheus exposition, one endpoint for every process."""

from __future__ import annotations

import gzip
import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.cache import patch_vary_headers
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.multiprocess import MultiProcessCollector

from . import metrics as platform_metrics

_multiprocess_registries: dict[str, CollectorRegistry] = {}


def registry() -> CollectorRegistry:
    """What a scrape reports: every process's files in multiprocess mode, else this process's registry."""
    path = platform_metrics.multiprocess_dir()
    if path is None:
        return REGISTRY
    found = _multiprocess_registries.get(path)
    if found is None:
        # The collector reads the directory afresh on every scrape.
        found = CollectorRegistry()
        MultiProcessCollector(found, path=path)
        _multiprocess_registries[path] = found
    return found


def _authorized(request: HttpRequest) -> bool:
    token = getattr(settings, "PLATFORM_METRICS_TOKEN", "")
    if not token:
        return True
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), token.encode())


@never_cache
@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    """Called by Prometheus on every scrape."""
    if not _authorized(request):
        response = HttpResponse("A bearer token is required to read the metrics.\n", status=401,
                                content_type="text/plain; charset=utf-8")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    platform_metrics.refresh()
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encoder(registry())
    response = HttpResponse(content_type=content_type)
    if gzip_accepted(request.headers.get("Accept-Encoding", "")):
        body = gzip.compress(body)
        response["Content-Encoding"] = "gzip"
    response.content = body
    patch_vary_headers(response, ("Accept", "Accept-Encoding"))
    return response
