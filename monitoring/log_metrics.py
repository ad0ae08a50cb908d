"""Prometheus metrics of the prediction-log writer (``monitoring.predictionlog``), beside the serving metrics.

Kept apart from :mod:`monitoring.metrics` so the log's modules import only
what they report; the names share its ``platform_`` prefix and its rules.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from .metrics import NAMESPACE

LOG_BUFFER_RECORDS = Gauge(
    "log_buffer_records", "Prediction records waiting in memory for the database.",
    namespace=NAMESPACE, multiprocess_mode="livesum",
)
LOG_SPILL_RECORDS = Gauge(
    "log_spill_records", "Prediction records in spill files waiting to be replayed into the database.",
    namespace=NAMESPACE, multiprocess_mode="livesum",
)
LOG_RECORDS_WRITTEN = Counter(
    "log_records_written", "Prediction records inserted into the database.", namespace=NAMESPACE,
)
LOG_RECORDS_SPILLED = Counter(
    "log_records_spilled",
    "Prediction records written to a spill file because the buffer was full or the database down.",
    namespace=NAMESPACE,
)
LOG_RECORDS_LOST = Counter(
    "log_records_lost", "Prediction records that could be kept neither in the database nor in a spill file.",
    namespace=NAMESPACE,
)
LOG_WRITE_ERRORS = Counter(
    "log_write_errors", "Failed attempts to insert a batch of prediction records.", namespace=NAMESPACE,
)
LOG_JOURNAL_RECORDS = Counter(
    "log_journal_records", "Prediction records written to the journal before their replies left.",
    namespace=NAMESPACE,
)
LOG_JOURNAL_WRITE_ERRORS = Counter(
    "log_journal_write_errors", "Writes to the journal that failed (the records stay in memory).",
    namespace=NAMESPACE,
)
LOG_JOURNAL_FSYNC = Histogram(
    "log_journal_fsync_seconds", "Time each fsync of the journal took (off the event loop).",
    namespace=NAMESPACE, buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
LOG_JOURNAL_RECOVERED = Counter(
    "log_journal_recovered_records",
    "Prediction records recovered from the journal of a process that stopped without writing them.",
    namespace=NAMESPACE,
)
