"""First-run credentials for the development server: a staff login and a demo API key."""

import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from streaming.models import APIKey

DEMO_KEY_NAME = "demo"


class Command(BaseCommand):
    help = "Create a staff user and a demo API key if missing, and say where to point a browser and a client."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", default="8000")

    def handle(self, host, port, **options):
        path = settings.DATA_DIR / "demo-credentials.txt"
        lines = {}
        if path.exists():
            for line in path.read_text().splitlines():
                key, _, value = line.partition("=")
                lines[key.strip()] = value.strip()

        User = get_user_model()
        if not User.objects.filter(is_superuser=True).exists():
            password = secrets.token_urlsafe(12)
            User.objects.create_superuser("admin", "admin@localhost", password)
            lines["admin_user"] = "admin"
            lines["admin_password"] = password

        key = APIKey.objects.filter(name=DEMO_KEY_NAME).first()
        if key is None or not key.is_active or "api_key" not in lines:
            if key is None:
                key = APIKey(name=DEMO_KEY_NAME)
            raw = key.set_new_key()
            key.revoked_at = None
            key.save()
            lines["api_key"] = raw

        path.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
        os.chmod(path, 0o600)

        base = f"http://{host}:{port}"
        self.stdout.write(
            "\n".join(
                [
                    "",
                    f"Dashboard:   {base}/  (log in as {lines.get('admin_user', 'your superuser')}; "
                    f"credentials in {path})",
                    f"Admin:       {base}/admin/",
                    f"Metrics:     {base}/metrics",
                    f"Predictions: ws://{host}:{port}/ws/v1/predict/  with  "
                    f"Authorization: Bearer <api_key from {path}>",
                    f"Try it:      .venv/bin/python scripts/predict.py --url ws://{host}:{port}/ws/v1/predict/iris/ "
                    "5.1 3.5 1.4 0.2",
                    "",
                ]
            )
        )
