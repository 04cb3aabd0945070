"""Per-prediction side effects, off the request path: the hook for the prediction log, the
audit trail of predictions, a shadow model.

An observer is any callable taking one `PredictionEvent`. `create_app(settings,
observers=[...])` registers them (and `--log` / `--audit-predictions` add their own);
after /v1/predict has computed its answer, one event per image is offered to every
observer's own bounded queue, and one thread per observer calls it. The request never
waits for an observer: a full queue drops the event for that observer only (counted), so
a slow one (face blurring before an image is kept) never costs another (the audit trail)
its events; an observer that raises is counted and logged (at most once a minute), never
propagated.

What an observer may ask for, as attributes:
- `wants_embedding = True`: the server fetches the embedding output in the same ONNX run
  and puts it in `event.embedding`;
- `wants_image_bytes = True`: the upload's bytes as received go in `event.image_bytes`
  (held in memory only; each queue also holds at most `max_queue_bytes` of them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sightwise.serve.logs import RateLimitedLog

log = logging.getLogger("sightwise.serve")
Observer = Callable[["PredictionEvent"], None]
OUTCOMES = ("delivered", "dropped", "errors")


@dataclass(frozen=True)
class PredictionEvent:
    """What one image's prediction was, as the server computed it."""

    model: str                      # served name
    version: int | str              # the version that computed it
    filename: str | None            # as sent by the client
    probabilities: np.ndarray       # (C,) calibrated, in the model's class order
    embedding: np.ndarray | None    # (D,) when an observer wants it, else None
    image_sha256: str               # of the uploaded file's bytes
    latency_s: float                # body received -> answer computed
    at: float                       # time.time() when the answer was computed
    model_input: np.ndarray | None = None  # the uint8 (S,S,3) array the model saw
    image_bytes: bytes | None = None       # the upload as received, when an observer wants it
    bundle_path: Path | None = None        # the bundle folder of the version that answered
    client: str | None = None              # the client's address
    token_id: str | None = None            # short hash of the request's valid token, never it
    classes: Sequence[str] | None = None   # the model's class names, in probability order


def observer_name(observer) -> str:
    return str(getattr(observer, "name", None) or getattr(observer, "__name__", None)
               or type(observer).__name__)


class _Lane:
    """One observer's bounded queue and the thread that calls it."""

    def __init__(self, observer: Observer, max_queue: int, max_bytes: int,
                 warn: RateLimitedLog):
        self.observer, self.name = observer, observer_name(observer)
        self.max_queue, self.max_bytes = max_queue, max_bytes
        self.counts: Counter[str] = Counter()
        self._warn = warn
        self._items: deque[PredictionEvent] = deque()
        self._bytes = 0
        self._closing = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name=f"sightwise-observer-{self.name}")
            self._thread.start()

    def offer(self, event: PredictionEvent) -> None:
        size = len(event.image_bytes or b"")
        with self._cond:
            if (self._closing or len(self._items) >= self.max_queue
                    or (size and self._bytes + size > self.max_bytes)):
                self.counts["dropped"] += 1
                self._warn.warning(f"dropped:{self.name}", "prediction observer %s falls "
                                   "behind: events dropped", self.name)
                return
            self._items.append(event)
            self._bytes += size
            self._cond.notify()

    def pending(self) -> int:
        return len(self._items)

    def stop_taking(self) -> None:
        """Take no more events; the thread delivers what is queued, then ends."""
        with self._cond:
            self._closing = True
            self._cond.notify()

    def join(self, deadline: float) -> None:
        """Wait for the thread until `deadline` (time.monotonic)."""
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
            self._thread = None  # a stuck observer's daemon thread is abandoned

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closing:
                    self._cond.wait()
                if not self._items:
                    return
                event = self._items.popleft()
                self._bytes -= len(event.image_bytes or b"")
            try:
                self.observer(event)
                self.counts["delivered"] += 1
            except Exception as exc:  # an observer's bug must not reach a request
                self.counts["errors"] += 1
                self._warn.warning(f"error:{self.name}", "prediction observer %s failed: %s",
                                   self.name, exc)


class Observers:
    """The registered observers, each with its own bounded queue and thread."""

    def __init__(self, observers: Sequence[Observer] = (), max_queue: int = 1024,
                 max_queue_bytes: int = 64 << 20):
        self.observers = list(observers)
        self.wants_embedding = any(getattr(o, "wants_embedding", False) for o in self.observers)
        self.wants_image_bytes = any(getattr(o, "wants_image_bytes", False)
                                     for o in self.observers)
        warn = RateLimitedLog(log.warning)
        self.lanes = [_Lane(o, max_queue, max_queue_bytes, warn) for o in self.observers]

    def __bool__(self) -> bool:
        return bool(self.observers)

    @property
    def counts(self) -> Counter[str]:
        """delivered, dropped, errors: summed over the observers."""
        total: Counter[str] = Counter({k: 0 for k in OUTCOMES})
        for lane in self.lanes:
            total.update(lane.counts)
        return total

    def status(self) -> dict:
        """Per observer: its counts and how many events wait for it."""
        return {lane.name: {**{k: lane.counts[k] for k in OUTCOMES}, "pending": lane.pending()}
                for lane in self.lanes}

    def start(self) -> None:
        for lane in self.lanes:
            lane.start()

    def notify(self, events: Sequence[PredictionEvent]) -> None:
        """Offer `events` to every observer without waiting; what does not fit is dropped
        and counted."""
        for event in events:
            for lane in self.lanes:
                lane.offer(event)

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (all observers together within `timeout`), then stop."""
        deadline = time.monotonic() + timeout
        for lane in self.lanes:
            lane.stop_taking()
        for lane in self.lanes:
            lane.join(deadline)
