from django.contrib import admin
from django.contrib.auth.views import LogoutView
from django.http import JsonResponse
from django.urls import path

from frontend import agreement as frontend_agreement
from frontend import views as frontend_views
from monitoring.views import metrics as metrics_view
from streaming import deploy_api, rollout_api


def healthz(request):
    """Liveness and readiness: the models this process serves and those that failed to load."""
    from inference.service import get_service

    state = get_service().health()
    return JsonResponse(state, status=200 if state["ready"] else 503)


urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
    path("", frontend_views.dashboard, name="dashboard"),
    path("dashboard/agreement.json", frontend_agreement.agreement, name="dashboard-agreement"),
    path("login/", frontend_views.LoginView.as_view(), name="login"),
    path("logout/", LogoutView.as_view(), name="logout"),
    # The deployment API for pipelines (streaming/deploy_api.py).
    path("api/v1/models/<str:name>", deploy_api.model_detail, name="deploy-model"),
    path("api/v1/models/<str:name>/versions", deploy_api.register_version, name="deploy-register"),
    path("api/v1/models/<str:name>/versions/<int:number>/activate", deploy_api.activate_version,
         name="deploy-activate"),
    path("api/v1/models/<str:name>/versions/<int:number>/retire", deploy_api.retire_version, name="deploy-retire"),
    path("api/v1/models/<str:name>/rollback", deploy_api.rollback, name="deploy-rollback"),
    # Progressive rollout (streaming/rollout_api.py).
    path("api/v1/models/<str:name>/rollout", rollout_api.rollout_detail, name="rollout"),
    path("api/v1/models/<str:name>/rollout/shadow", rollout_api.set_shadow, name="rollout-shadow"),
    path("api/v1/models/<str:name>/rollout/canary", rollout_api.set_canary, name="rollout-canary"),
    path("api/v1/models/<str:name>/rollout/promote", rollout_api.promote, name="rollout-promote"),
    path("api/v1/models/<str:name>/rollout/abort", rollout_api.abort, name="rollout-abort"),
]
