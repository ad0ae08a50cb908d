from django.apps import AppConfig


class FrontendConfig(AppConfig):
    name = "frontend"
    verbose_name = "Dashboard"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.conf import settings
        from django.contrib.auth.signals import user_logged_out

        from . import stats, views

        # The dashboard's statistics are monitoring too: the switch that turns
        # the metrics and the prediction log off (to measure what they cost)
        # turns them off as well.
        if settings.PLATFORM_MONITORING:
            stats.install()
        user_logged_out.connect(views.revoke_dashboard_key, dispatch_uid="frontend.revoke_dashboard_key")
