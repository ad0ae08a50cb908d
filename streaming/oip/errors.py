"""The protocol's errors: an HTTP status, the outcome the log and metrics keep, and a sentence for the client."""

from __future__ import annotations

from inference.exceptions import InferenceError
from inference.outcomes import Outcome

from ..exceptions import StreamingError

#: The HTTP status of each inference error's outcome.
STATUS_OF_OUTCOME: dict[str, int] = {
    Outcome.INVALID_INPUT: 400,
    Outcome.INVALID_REQUEST: 400,
    Outcome.INVALID_JSON: 400,
    Outcome.UNKNOWN_MODEL: 404,
    Outcome.MODEL_UNAVAILABLE: 503,
    Outcome.OVERLOADED: 503,
    Outcome.RATE_LIMITED: 429,
    Outcome.TIMEOUT: 504,
}


def status_of(exc: InferenceError) -> int:
    return STATUS_OF_OUTCOME.get(exc.code, 500)


class HttpError(StreamingError):
    """An infer or metadata request is refused with ``status``; ``code`` is its outcome for the log.

    The status is the HTTP one; the gRPC service says it as a gRPC code
    (``streaming.oip.rpc.status``). ``shutting_down`` marks the refusal of a
    server that drains, which gRPC says as UNAVAILABLE rather than as the
    RESOURCE_EXHAUSTED of a full queue.
    """

    def __init__(self, status: int, code: str, message: str, *, retry_after_s: int | None = None,
                 headers: list[tuple[bytes, bytes]] | None = None, shutting_down: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.code = str(code)
        self.message = message
        self.shutting_down = shutting_down
        self.retry_after_s = None if retry_after_s is None else max(1, retry_after_s)
        self._headers = list(headers or [])
        if retry_after_s is not None:
            self._headers.append((b"retry-after", str(max(1, retry_after_s)).encode()))

    def headers(self) -> list[tuple[bytes, bytes]]:
        return list(self._headers)
