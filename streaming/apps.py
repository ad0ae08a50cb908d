from django.apps import AppConfig


class StreamingConfig(AppConfig):
    name = "streaming"
    verbose_name = "Streaming clients"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from platform_core.lifecycle import on_shutdown

        from .consumers import drain_connections

        on_shutdown(drain_connections, order=10)
