"""A wall-clock budget that training stages consult before starting more work."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Budget:
    """`seconds` from `start` on `clock` (None: unbounded). The clock is a parameter so a
    test can run a budget out deterministically instead of racing the machine's speed."""

    seconds: float | None
    start: float | None = None
    clock: Callable[[], float] = field(default=time.perf_counter, repr=False)

    def __post_init__(self) -> None:
        if self.start is None:
            self.start = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        return float("inf") if self.seconds is None else self.seconds - self.elapsed()

    def allows(self, seconds_needed: float) -> bool:
        return self.left() >= seconds_needed
