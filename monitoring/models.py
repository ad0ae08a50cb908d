"""The prediction log: one record per answered request, an audit trail that is never edited."""

from django.db import models

from inference.outcomes import Outcome as OutcomeCode

# The widths of the text columns, one source for this model and for the writer
# (monitoring.predictionlog), which cuts longer values.
from .predictionlog.columns import (
    API_KEY_NAME_LENGTH,
    MODEL_NAME_LENGTH,
    OUTCOME_LENGTH,
    PROTOCOL_LENGTH,
    REQUEST_ID_LENGTH,
)

#: ``ok`` or one of the protocol's error codes (docs: PROTOCOL.md, "Errors"), as model choices.
Outcome = models.TextChoices("Outcome", [(code.name, (code.value, code.value)) for code in OutcomeCode])
#: How the request came: the WebSocket protocol, or the Open Inference Protocol over HTTP or gRPC.
Protocol = models.TextChoices(
    "Protocol", [("WEBSOCKET", ("websocket", "WebSocket")), ("HTTP", ("http", "HTTP (Open Inference Protocol)")),
                 ("GRPC", ("grpc", "gRPC (Open Inference Protocol)"))]
)


class PredictionRecord(models.Model):
    # Chosen by the process that received the request, before the record is
    # written anywhere: retries and spill-file replays insert it at most once.
    event_id = models.UUIDField(unique=True, editable=False)
    received_at = models.DateTimeField(help_text="When the request frame arrived.")
    model = models.CharField(max_length=MODEL_NAME_LENGTH, blank=True)
    version = models.IntegerField(null=True, blank=True)
    api_key = models.CharField(
        "API key", max_length=API_KEY_NAME_LENGTH, blank=True,
        help_text="The key's name, never its secret; empty where authentication is off.",
    )
    request_id = models.CharField(
        max_length=REQUEST_ID_LENGTH, blank=True, help_text="The id the client gave the request."
    )
    rows = models.PositiveIntegerField(default=0)
    inputs = models.JSONField(null=True, blank=True)
    outputs = models.JSONField(null=True, blank=True)
    outcome = models.CharField(max_length=OUTCOME_LENGTH, choices=Outcome.choices)
    error = models.TextField(blank=True, help_text="The error message the client was sent.")
    queue_ms = models.FloatField(null=True, blank=True)
    inference_ms = models.FloatField(null=True, blank=True)
    total_ms = models.FloatField(null=True, blank=True)
    batch_size = models.PositiveIntegerField(null=True, blank=True)
    protocol = models.CharField(
        max_length=PROTOCOL_LENGTH, choices=Protocol.choices, default=Protocol.WEBSOCKET,
        db_default=Protocol.WEBSOCKET, help_text="How the request came.",
    )

    class Meta:
        verbose_name = "prediction"
        ordering = ["-received_at", "-id"]
        default_permissions = ["view"]
        indexes = [
            # The changelist's default order, the date drill-down and retention.
            models.Index(fields=["received_at"], name="predlog_received"),
            # Filters, each followed by the time so a filtered page is read in order.
            models.Index(fields=["model", "received_at"], name="predlog_model_received"),
            models.Index(fields=["outcome", "received_at"], name="predlog_outcome_received"),
            models.Index(fields=["api_key", "received_at"], name="predlog_key_received"),
            models.Index(fields=["protocol", "received_at"], name="predlog_protocol_received"),
            # Requests and errors per version, counted from the index alone.
            models.Index(fields=["model", "version", "outcome"], name="predlog_version_outcome"),
            # Search by request id, exact or prefix (LIKE 'x%' on PostgreSQL needs
            # the pattern operator class; other databases ignore it).
            models.Index(fields=["request_id"], name="predlog_request_id", opclasses=["varchar_pattern_ops"]),
        ]

    def __str__(self):
        return f"{self.request_id or '-'} ({self.model or '?'} v{self.version or '?'}, {self.outcome})"

    @property
    def is_error(self):
        return self.outcome != Outcome.OK


# The shadow comparisons' tables live with their feature (monitoring/comparisons/).
from .comparisons.models import ShadowComparison, ShadowDisagreement  # noqa: E402, F401
