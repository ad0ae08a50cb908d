from django.apps import AppConfig


class PlatformCoreConfig(AppConfig):
    """The project's own app: listed last, so that every other app is ready when it wires them together."""

    name = "platform_core"
    verbose_name = "Platform"

    def ready(self):
        from . import wiring

        wiring.connect()
