"""Delete prediction records past the retention period, a batch at a time."""

import time
from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from monitoring.models import PredictionRecord


class Command(BaseCommand):
    help = (
        "Delete prediction-log records received more than --days days ago "
        "(default: PLATFORM_LOG_RETENTION_DAYS), in batches."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--days", type=int, default=None,
            help="Keep this many days of records (default: PLATFORM_LOG_RETENTION_DAYS; 0 there keeps everything).",
        )
        parser.add_argument(
            "--batch-size", type=int, default=5000,
            help="Records deleted per statement; each batch is its own transaction (default: 5000).",
        )
        parser.add_argument(
            "--pause-ms", type=float, default=0.0,
            help="Pause between batches, leaving the database to the log writer (default: 0).",
        )
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted; delete nothing.")

    def handle(self, *args, days=None, batch_size=5000, pause_ms=0.0, dry_run=False, **options):
        if days is None:
            days = settings.PLATFORM_LOG_RETENTION_DAYS
            if days == 0:
                self.stdout.write("PLATFORM_LOG_RETENTION_DAYS is 0: prediction records are kept forever.")
                return
        if days < 1:
            raise CommandError(f"--days must be at least 1, not {days}.")
        if batch_size < 1:
            raise CommandError(f"--batch-size must be at least 1, not {batch_size}.")
        if pause_ms < 0:
            raise CommandError(f"--pause-ms cannot be negative, not {pause_ms}.")

        cutoff = timezone.now() - timedelta(days=days)
        expired = PredictionRecord.objects.filter(received_at__lt=cutoff)
        if dry_run:
            count = expired.count()
            self.stdout.write(f"{count} prediction records were received before {cutoff:%Y-%m-%d %H:%M} UTC "
                              f"and would be deleted.")
            return

        total = 0
        while True:
            # Oldest first, by the time index; a short transaction per batch so
            # that the log writer is never locked out for long.
            batch = expired.order_by("received_at").values("pk")[:batch_size]
            deleted, _ = PredictionRecord.objects.filter(pk__in=batch).delete()
            total += deleted
            if options["verbosity"] >= 2 and deleted:
                self.stdout.write(f"  deleted {deleted} ({total} so far)")
            if deleted < batch_size:
                break
            if pause_ms:
                time.sleep(pause_ms / 1000.0)
        self.stdout.write(
            f"Deleted {total} prediction records received before {cutoff:%Y-%m-%d %H:%M} UTC "
            f"(older than {days} days)."
        )
