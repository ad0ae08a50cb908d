from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "monitoring"
    verbose_name = "Monitoring"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # The shadow comparisons' tables live with their feature (monitoring/comparisons/).
        from .comparisons import models  # noqa: F401
