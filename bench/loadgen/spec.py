"""What one load is: the server, the request, the loop, how hard and for how long."""

from __future__ import annotations

import time
from dataclasses import dataclass

#: Request ids are integers: ``id_base + connection * ID_STRIDE + n``, unique
#: across connections and, with distinct ``id_base`` values, across runs.
ID_STRIDE = 10**9

clock = time.monotonic  # CLOCK_MONOTONIC: one clock for every process on the machine


class LoadError(Exception):
    """The load could not be run: the server refused connections or a client process failed."""


@dataclass(frozen=True)
class LoadSpec:
    """One load: what to send, how hard, for how long."""

    url: str
    model: str
    rows: int = 1
    #: "json" (text frames) or "msgpack" (binary frames).
    encoding: str = "json"
    connections: int = 32
    #: Closed loop: requests each connection keeps outstanding.
    in_flight: int = 8
    #: Open loop: the aggregate request rate over all connections; None for closed loop.
    rate_per_s: float | None = None
    duration_s: float = 10.0
    warmup_s: float = 2.0
    processes: int = 1
    #: After the window, how long to wait for replies still outstanding.
    drain_timeout_s: float = 10.0
    #: Features per row; by default read from the server's ``ready`` message.
    features: int | None = None
    id_base: int = 0
    seed: int = 0
    connect_timeout_s: float = 60.0

    @property
    def mode(self) -> str:
        return "closed" if self.rate_per_s is None else "open"

    def check(self) -> None:
        if self.encoding not in ("json", "msgpack"):
            raise ValueError(f"encoding must be 'json' or 'msgpack', not {self.encoding!r}.")
        for name in ("rows", "connections", "in_flight", "processes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}.")
        if self.connections >= ID_STRIDE // 1000:
            raise ValueError(f"At most {ID_STRIDE // 1000 - 1} connections are supported.")
        if self.processes > self.connections:
            raise ValueError(f"processes ({self.processes}) cannot exceed connections ({self.connections}).")
        if self.rate_per_s is not None and not self.rate_per_s > 0:
            raise ValueError(f"rate_per_s must be a positive number, not {self.rate_per_s}.")
        if self.duration_s <= 0 or self.warmup_s < 0 or self.drain_timeout_s < 0:
            raise ValueError("duration_s must be positive, warmup_s and drain_timeout_s not negative.")
