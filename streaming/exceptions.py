"""Errors raised at the platform's edge, before a request reaches the inference layer."""


class StreamingError(Exception):
    """Base class for every error the streaming layer raises."""


class DeployRefused(StreamingError):
    """A deployment API request is refused: no, bad or insufficient credentials; ``status`` is the HTTP answer."""

    def __init__(self, message: str, *, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
