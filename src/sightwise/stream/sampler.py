"""Frame sampling at a requested rate, and the bounded hand-off from reader to model.

The reader thread decodes every frame (a decoder cannot skip ahead in a compressed stream)
and keeps the first frame of each 1/fps slot of the source's clock, so the sampling follows
the video's own time and does not drift with decoding speed. Kept frames wait in a
`FrameSlot` of a few places: a live source never waits for the model, so when the slot is
full the oldest waiting frame is dropped and counted (the freshest frame is the one worth
looking at); a file waits for room instead and loses nothing.
"""

from __future__ import annotations

import math
import threading
from collections import deque

from sightwise.stream.sources import Frame


class Sampler:
    """Keep the first frame in each 1/fps-second slot; fps <= 0 or None keeps every frame.

    >>> s = Sampler(2.0)
    >>> [t for t in (0.0, 0.2, 0.4, 0.5, 0.9, 1.0, 1.6) if s.keep(t)]
    [0.0, 0.5, 1.0, 1.6]
    """

    # Frame times are sums of float steps (0.1 * 5 = 0.5000000000000001 or 0.49999999999999994);
    # a millisecond's slack puts a frame on its nominal slot.
    EPS = 1e-3

    def __init__(self, fps: float | None):
        self.step = 1.0 / fps if fps and fps > 0 else 0.0
        self.last_slot: int | None = None

    def keep(self, t: float) -> bool:
        if not self.step:
            return True
        slot = math.floor((t + self.EPS) / self.step)
        if self.last_slot is not None and slot <= self.last_slot:
            return False
        self.last_slot = slot
        return True


class FrameSlot:
    """A bounded queue of frames and markers (gaps, the end) between two threads.

    At most `capacity` frames wait. `put(frame, drop=True)` makes room by discarding the
    oldest waiting frame and returns how many it dropped; `drop=False` waits for room
    (until `stop` is set). Markers are never dropped and keep their place in the order.
    """

    def __init__(self, capacity: int = 2):
        if capacity < 1:
            raise ValueError("the frame queue needs at least one place")
        self.capacity = capacity
        self._items: deque = deque()
        self._frames = 0
        self._cond = threading.Condition()

    def put(self, item, *, drop: bool, stop: threading.Event | None = None) -> int:
        dropped = 0
        with self._cond:
            if isinstance(item, Frame):
                while self._frames >= self.capacity:
                    if drop:
                        self._drop_oldest_frame()
                        dropped += 1
                    elif stop is not None and stop.is_set():
                        return 0
                    else:
                        self._cond.wait(0.1)
                self._frames += 1
            self._items.append(item)
            self._cond.notify_all()
        return dropped

    def _drop_oldest_frame(self) -> None:
        for i, it in enumerate(self._items):
            if isinstance(it, Frame):
                del self._items[i]
                self._frames -= 1
                return

    def get(self, timeout: float):
        """The next item, or None after `timeout` seconds with nothing to take."""
        with self._cond:
            if not self._items and not self._cond.wait_for(lambda: self._items, timeout):
                return None
            item = self._items.popleft()
            if isinstance(item, Frame):
                self._frames -= 1
            self._cond.notify_all()
            return item

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
