"""The widths of the prediction log's text columns: the model declares them, the writer cuts longer values.

A longer value is cut rather than refused: a model name in a refused frame,
for one, is whatever the client sent. Framework-free, so that the row format
(and the writer process, before Django is configured) reads the same numbers
as ``monitoring.models``.
"""

from inference.outcomes import MODEL_NAME_LENGTH

__all__ = ["API_KEY_NAME_LENGTH", "MODEL_NAME_LENGTH", "OUTCOME_LENGTH", "PROTOCOL_LENGTH", "REQUEST_ID_LENGTH"]

API_KEY_NAME_LENGTH = 100
REQUEST_ID_LENGTH = 128
OUTCOME_LENGTH = 32
PROTOCOL_LENGTH = 16
