"""What the client raises: a request the server refused, a connection it will not reopen, a client closed."""

from __future__ import annotations

from typing import Any

#: Close codes after which the client opens a new connection and sends again what was not answered:
#: a normal close it did not ask for, the server going away (1001), an internal error or restart
#: (1011-1013), and a connection that ended without a close frame (1006).
RECONNECT_CLOSE_CODES = frozenset({1000, 1001, 1006, 1011, 1012, 1013, 1014})


class ClientError(Exception):
    """Base class for every error the prediction client raises."""


class RequestFailed(ClientError):
    """The server answered a request with an error; ``code`` is the protocol's error code."""

    def __init__(self, code: str, message: str, *, request_id: Any = None, retry_after_ms: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retry_after_ms = retry_after_ms

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> RequestFailed:
        error = reply.get("error")
        if not isinstance(error, dict):
            error = {}
        retry_after = error.get("retry_after_ms")
        return cls(
            str(error.get("code", "internal")),
            str(error.get("message", "The server answered with an error and no message.")),
            request_id=reply.get("id"),
            retry_after_ms=int(retry_after) if isinstance(retry_after, int | float) else None,
        )


class ConnectionRejected(ClientError):
    """The server closed the connection, or refused the handshake, for a reason a new connection would not fix."""

    def __init__(self, message: str, *, close_code: int | None = None, http_status: int | None = None) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.http_status = http_status


class AuthenticationFailed(ConnectionRejected):
    """The server refused the API key (close code 4401): missing, wrong, revoked or expired."""


class ConnectionLost(ClientError):
    """The connection could not be opened again within the client's reconnect attempts."""


class ClientClosed(ClientError):
    """The client was closed before the request was answered, or was used after it was closed."""


class ProtocolViolation(ClientError):
    """The server sent something the protocol does not allow (for example no ``ready`` after the handshake)."""


def error_for_close(code: int | None, reason: str = "") -> ClientError | None:
    """The error that ends the client after a close with ``code``, or None when it should reconnect."""
    if code is None or code in RECONNECT_CLOSE_CODES:
        return None
    suffix = f" ({reason})" if reason else ""
    if code == 4401:
        return AuthenticationFailed(
            f"The server refused the API key{suffix}: it is missing, wrong, revoked or expired (close code 4401).",
            close_code=code,
        )
    if code == 4404:
        return ConnectionRejected(f"The model named in the URL does not exist{suffix} (close code 4404).",
                                 close_code=code)
    if code == 1009:
        return ConnectionRejected(f"A request exceeded the server's frame size limit{suffix} (close code 1009).",
                                 close_code=code)
    if code == 1008:
        return ConnectionRejected(f"The server closed the connection for a policy violation{suffix}, such as a "
                                 "flood far beyond the key's rate limit (close code 1008).", close_code=code)
    return ConnectionRejected(f"The server closed the connection with code {code}{suffix}.", close_code=code)
