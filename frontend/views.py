"""The dashboard page (staff only) and the login page styled to match."""

from __future__ import annotations

import secrets
from datetime import timedelta
from functools import wraps

from django.contrib.auth import views as auth_views
from django.contrib.auth.views import redirect_to_login
from django.db import transaction
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache

from streaming.models import APIKey

from .examples import example_rows

#: Names of the keys the dashboard mints for its try-it panel: prefix, user, random part.
DASHBOARD_KEY_PREFIX = "dashboard-"
# Long enough for a working day with the page open; the page mints a new one
# when loaded with less than DASHBOARD_KEY_RENEW_BEFORE left.
DASHBOARD_KEY_LIFETIME = timedelta(hours=8)
DASHBOARD_KEY_RENEW_BEFORE = timedelta(hours=1)
# The panel sends one request per click; this bounds what a leaked key can do.
DASHBOARD_KEY_RATE_PER_S = 10.0
SESSION_KEY = "frontend.dashboard_key"


def staff_member_required(view):
    """Anonymous visitors go to the login page; logged-in users who are not staff get a 403 page."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        user = request.user
        if not user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not (user.is_active and user.is_staff):
            return render(request, "frontend/forbidden.html", status=403)
        return view(request, *args, **kwargs)

    return wrapper


def dashboard_key(request) -> tuple[str, object]:
    """The raw API key of this session's try-it panel, and when it expires; minted when needed.

    The raw key is kept in the server-side session so that reloading the page
    does not mint a key each time; it is revoked when the user logs out.
    """
    now = timezone.now()
    kept = request.session.get(SESSION_KEY)
    if kept:
        key = APIKey.objects.active().filter(pk=kept["id"], expires_at__gt=now + DASHBOARD_KEY_RENEW_BEFORE).first()
        if key is not None:
            return kept["raw"], key.expires_at
    user = request.user
    with transaction.atomic():
        # The user's dashboard keys that can no longer be used are of no more
        # interest: the prediction log keeps their names, not references.
        APIKey.objects.filter(created_by=user, name__startswith=DASHBOARD_KEY_PREFIX).exclude(
            pk__in=APIKey.objects.active().values("pk")
        ).delete()
        key = APIKey(
            name=f"{DASHBOARD_KEY_PREFIX}{user.get_username()[:60]}-{secrets.token_hex(4)}",
            created_by=user,
            expires_at=now + DASHBOARD_KEY_LIFETIME,
            rate_limit_per_s=DASHBOARD_KEY_RATE_PER_S,
        )
        raw = key.set_new_key()
        key.save()
    request.session[SESSION_KEY] = {"id": key.pk, "raw": raw}
    return raw, key.expires_at


def revoke_dashboard_key(sender, request, user, **kwargs):
    """Called when a user logs out: the session's try-it key goes with it."""
    kept = request.session.get(SESSION_KEY) if request is not None else None
    if kept:
        key = APIKey.objects.filter(pk=kept["id"], revoked_at__isnull=True).first()
        if key is not None:
            key.revoke()


@never_cache
@staff_member_required
def dashboard(request):
    """The live monitoring page."""
    from inference.models import MLModel

    raw_key, expires_at = dashboard_key(request)
    models = dict(MLModel.objects.values_list("name", "inputs"))
    config = {
        "dashboardPath": "/ws/v1/dashboard/",
        "predictPath": "/ws/v1/predict/",
        "apiKey": raw_key,
        "apiKeyExpiresAt": expires_at.isoformat(),
        "examples": example_rows(models),
        "loginUrl": f"{reverse('login')}?next={reverse('dashboard')}",
    }
    return render(request, "frontend/dashboard.html", {"config": config})


class LoginView(auth_views.LoginView):
    template_name = "frontend/login.html"
    redirect_authenticated_user = True

