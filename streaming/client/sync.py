"""The prediction client for code without an event loop: a loop of its own in a background thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar

from .client import PredictionClient

T = TypeVar("T")


class SyncPredictionClient:
    """``PredictionClient`` with blocking calls; ``submit`` returns a ``concurrent.futures.Future`` to pipeline.

    Takes the same arguments as ``PredictionClient``.
    """

    def __init__(self, url: str, api_key: str | None = None, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="prediction-client", daemon=True)
        self._thread.start()
        try:
            self._client = PredictionClient(url, api_key, **options)
            self._call(self._client.connect())
        except BaseException:
            self._stop_loop()
            raise

    @property
    def models(self) -> dict[str, Any]:
        return self._client.models

    def submit(self, model: str | None, rows: Sequence[Any], version: int | None = None) -> Future[dict[str, Any]]:
        """Send a request; the future holds its reply, or raises what ``PredictionClient.predict`` raises."""
        return asyncio.run_coroutine_threadsafe(self._client.predict(model, rows, version), self._loop)

    def predict(self, model: str | None, rows: Sequence[Any], version: int | None = None,
                timeout_s: float | None = None) -> dict[str, Any]:
        """Send a request and wait up to ``timeout_s`` (None: for ever) for its reply."""
        return self.submit(model, rows, version).result(timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Close the connection (see ``PredictionClient.close``) and stop the background loop."""
        if self._loop.is_closed():
            return
        try:
            self._call(self._client.close(timeout_s))
        finally:
            self._stop_loop()

    def __enter__(self) -> SyncPredictionClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
