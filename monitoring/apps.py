from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "monitoring"
    verbose_name = "Monitoring"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Listeners on the serving path's events (monitoring.events): Prometheus
        # metrics and the prediction log.
        from django.conf import settings

        from . import metrics, recorder

        if not settings.PLATFORM_MONITORING:
            return

        metrics.install()
        recorder.install()
