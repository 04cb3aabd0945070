"""Decode admission: pixels being decoded at once, across all requests, are bounded.

Admission by request count alone lets 64 requests of 16 images at the 40 MP limit decode
together (tens of gigabytes). Each image's pixel count is read from its header first; the
image is decoded only once its pixels fit in the budget, and they are given back when
the decode (and the per-image work after it) is over. Waiters are served first come,
first served, so a large image is not starved by a stream of small ones.

A decode thread cannot be interrupted. When a request's deadline passes, the request is
answered at once and the thread finishes its one image in the background, still holding
its pixels (`Hold`), so the budget always counts what is really being decoded.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque


class PixelBudget:
    """A counting semaphore over pixels, taken from the event loop and given back from
    any thread.

    >>> b = PixelBudget(100)
    >>> b.try_take(60), b.try_take(60), b.in_use
    (True, False, 60)
    >>> b.give(60); b.in_use
    0
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = int(capacity)
        self.in_use = 0
        self._lock = threading.Lock()
        self._waiters: deque[list] = deque()  # [n, future, loop]

    @property
    def waiting(self) -> int:
        """Requests waiting for room."""
        return len(self._waiters)

    def try_take(self, n: int) -> bool:
        """Take `n` now if they fit and nobody is waiting (any thread)."""
        n = min(int(n), self.capacity)
        with self._lock:
            if self._waiters or self.in_use + n > self.capacity:
                return False
            self.in_use += n
            return True

    async def take(self, n: int) -> None:
        """Wait until `n` fit, then take them; cancellation leaves the budget as it was."""
        n = min(int(n), self.capacity)
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._waiters and self.in_use + n <= self.capacity:
                self.in_use += n
                return
            entry = [n, loop.create_future(), loop]
            self._waiters.append(entry)
        try:
            await entry[1]
        except asyncio.CancelledError:
            with self._lock:
                if entry in self._waiters:  # still queued: leave the queue
                    self._waiters.remove(entry)
                    self._grant_locked()
                elif entry[1].done() and not entry[1].cancelled():  # granted as we left
                    self.in_use -= n
                    self._grant_locked()
                # else: granted but not delivered; _deliver sees the cancelled future
            raise

    def give(self, n: int) -> None:
        """Give back `n` taken earlier (any thread)."""
        n = min(int(n), self.capacity)
        with self._lock:
            self.in_use -= n
            self._grant_locked()

    def _grant_locked(self) -> None:
        while self._waiters and self.in_use + self._waiters[0][0] <= self.capacity:
            n, future, loop = self._waiters.popleft()
            self.in_use += n
            loop.call_soon_threadsafe(self._deliver, future, n)

    def _deliver(self, future: asyncio.Future, n: int) -> None:
        if future.cancelled():  # its waiter left after the grant: the pixels come back
            self.give(n)
        else:
            future.set_result(None)


class Hold:
    """`n` pixels of a budget, handed to a worker thread and given back exactly once:
    by the thread when it finishes, or by the request if the thread never started."""

    def __init__(self, budget: PixelBudget, n: int):
        self.budget, self.n = budget, n
        self._lock = threading.Lock()
        self._state = "held"  # -> "used" (a thread runs with it) -> "released"

    def claim(self) -> bool:
        """The worker thread, before decoding: False if the request gave up already."""
        with self._lock:
            if self._state != "held":
                return False
            self._state = "used"
            return True

    def release(self) -> None:
        with self._lock:
            if self._state == "released":
                return
            self._state = "released"
        self.budget.give(self.n)

    def abandon(self) -> None:
        """The request gave up: release now unless a thread is using the pixels."""
        with self._lock:
            if self._state != "held":
                return
            self._state = "released"
        self.budget.give(self.n)
