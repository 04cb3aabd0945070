"""Per-prediction side effects, off the request path: the hook for a prediction log, a
shadow model or an audit trail.

An observer is any callable taking one `PredictionEvent`. `create_app(settings,
observers=[...])` registers them; after /v1/predict has computed its answer, one event per
image is queued and a background thread calls every observer with it. The request never
waits for an observer: a full queue drops the event (counted), and an observer that
raises is counted and logged (at most once a minute), never propagated.

An observer with the attribute `wants_embedding = True` makes the server fetch the
embedding output in the same ONNX run and put it in `event.embedding`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from sightwise.serve.logs import RateLimitedLog

log = logging.getLogger("sightwise.serve")
Observer = Callable[["PredictionEvent"], None]


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


class Observers:
    """A bounded queue and one daemon thread calling `observers` with each event."""

    def __init__(self, observers: Sequence[Observer] = (), max_queue: int = 1024):
        self.observers = list(observers)
        self.wants_embedding = any(getattr(o, "wants_embedding", False) for o in self.observers)
        self.counts: Counter[str] = Counter()  # delivered, dropped, errors
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._warn = RateLimitedLog(log.warning)

    def __bool__(self) -> bool:
        return bool(self.observers)

    def start(self) -> None:
        if self.observers and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="sightwise-observers",
                                            daemon=True)
            self._thread.start()

    def notify(self, events: Sequence[PredictionEvent]) -> None:
        """Queue `events` without waiting; what does not fit is dropped and counted."""
        for event in events:
            try:
                self._queue.put_nowait(event)
            except queue.Full:
                self.counts["dropped"] += 1
                self._warn.warning("dropped", "prediction observers fall behind: events dropped")

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (up to `timeout`), then stop the thread."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            self._queue.put(None, timeout=1.0)
        except queue.Full:
            pass  # the daemon thread is abandoned with what it still holds
        self._thread.join(max(0.0, deadline - time.monotonic()) + 1.0)
        self._thread = None

    def _loop(self) -> None:
        while (event := self._queue.get()) is not None:
            for observer in self.observers:
                try:
                    observer(event)
                    self.counts["delivered"] += 1
                except Exception as exc:  # an observer's bug must not reach a request
                    self.counts["errors"] += 1
                    name = getattr(observer, "__name__", type(observer).__name__)
                    self._warn.warning(f"error:{name}", "prediction observer %s failed: %s",
                                       name, exc)
