"""Create an API key from the command line; the key is printed once and never stored."""

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from inference.models import MLModel
from streaming.models import APIKey


class Command(BaseCommand):
    help = (
        "Create an API key for prediction clients, or with --deploy for a deployment pipeline, and print it "
        "(only its hash is stored)."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="Who will use the key; shown in the prediction log.")
        parser.add_argument("--models", default="", help="Comma-separated model names the key may use (default: all).")
        parser.add_argument("--rate", type=float, default=None, help="Most requests per second (default: no limit).")
        parser.add_argument(
            "--deploy", action="store_true",
            help="May also register, activate, roll back and retire model versions through the deployment API "
                 "(limited to --models when given).",
        )

    def handle(self, name, models="", rate=None, deploy=False, **options):
        names = [m.strip() for m in models.split(",") if m.strip()]
        found = list(MLModel.objects.filter(name__in=names))
        missing = sorted(set(names) - {m.name for m in found})
        if missing:
            raise CommandError(f"No such model(s): {', '.join(missing)}.")
        if rate is not None and rate <= 0:
            raise CommandError("--rate must be a positive number of requests per second.")
        if APIKey.objects.filter(name=name).exists():
            raise CommandError(
                f"An API key named {name!r} already exists; choose another name or revoke it in the admin."
            )
        with transaction.atomic():
            key = APIKey(name=name, rate_limit_per_s=rate, can_deploy=deploy)
            raw = key.set_new_key()
            key.save()
            key.allowed_models.set(found)
        self.stdout.write(raw)
        scope = ", ".join(names) if names else "all models"
        limit = f"{rate:g} requests/s" if rate else "no rate limit"
        may = ", may deploy models" if deploy else ""
        self.stderr.write(
            f"Created API key {name!r} for {scope}, {limit}{may}. Store it now: it is not shown again."
        )
