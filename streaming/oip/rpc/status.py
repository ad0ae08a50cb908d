"""The protocol's refusals as gRPC status codes, with the retry hint in the trailing metadata."""

from __future__ import annotations

import grpc

from inference.outcomes import Outcome

from ..errors import HttpError

#: The gRPC code of each HTTP status the protocol answers with.
CODE_OF_STATUS: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
#: The trailing metadata key of the seconds to wait before retrying, as HTTP's Retry-After.
RETRY_AFTER = "retry-after"


def code_of(exc: HttpError) -> grpc.StatusCode:
    """A full queue is RESOURCE_EXHAUSTED (retry here, later); a server shutting down is UNAVAILABLE (go elsewhere)."""
    if exc.code == Outcome.OVERLOADED and not exc.shutting_down:
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return CODE_OF_STATUS.get(exc.status, grpc.StatusCode.INTERNAL)


def trailing_metadata(exc: HttpError) -> tuple[tuple[str, str], ...]:
    if exc.retry_after_s is None:
        return ()
    return ((RETRY_AFTER, str(exc.retry_after_s)),)
