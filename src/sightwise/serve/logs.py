"""Log lines a client can trigger, at most once a minute each (with a count of the rest):
a client must not be able to flood the server's log."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

REPORT_EVERY_S = 60.0


class RateLimitedLog:
    """`warning(key, ...)` logs at most once per `interval_s` per key, then says how many
    were left out.

    >>> t = [0.0]; seen = []
    >>> r = RateLimitedLog(lambda m, *a: seen.append(m % a), 60.0, clock=lambda: t[0])
    >>> for _ in range(3): r.warning("k", "refused %s", "x")
    >>> t[0] = 61.0; r.warning("k", "refused %s", "y"); seen
    ['refused x', 'refused y (2 more since the last report)']
    """

    def __init__(self, emit: Callable[..., None], interval_s: float = REPORT_EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        self.emit, self.interval_s, self.clock = emit, interval_s, clock
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, key: str, message: str, *args) -> None:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._last[key] = (last[0], last[1] + 1)
            return
        if last is not None and last[1]:
            message += f" ({last[1]} more since the last report)"
        self._last[key] = (now, 0)
        self.emit(message, *args)


class RateLimitFilter(logging.Filter):
    """A logging filter passing each WARNING-or-worse message template at most once per
    interval (for uvicorn's "Invalid HTTP request received." and its upgrade warnings,
    which a client can trigger at will)."""

    def __init__(self, interval_s: float = REPORT_EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self._limiter = RateLimitedLog(self._keep, interval_s, clock)
        self._passed: str | None = None

    def _keep(self, message: str, *args) -> None:
        self._passed = message

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or record.exc_info:
            return True
        self._passed = None
        key = str(record.msg)
        self._limiter.warning(key, key)
        if self._passed is None:
            return False
        record.msg = self._passed
        return True
