from django.apps import AppConfig


class FrontendConfig(AppConfig):
    name = "frontend"
    verbose_name = "Dashboard"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.contrib.auth.signals import user_logged_out

        from . import views

        user_logged_out.connect(views.revoke_dashboard_key, dispatch_uid="frontend.revoke_dashboard_key")
