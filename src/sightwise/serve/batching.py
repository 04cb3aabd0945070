"""Dynamic batching: requests that arrive within a few milliseconds run as one ONNX batch.

A bounded queue sits in front of `workers` threads. A worker takes the oldest item, waits
until `window_ms` after that item arrived (or until `max_batch` items are queued), then
hands the items to `process` grouped by key, so one batch never mixes two models (a
hot-swap can happen between preprocessing and inference) or two kinds of work. Workers
run the graph outside the event loop; onnxruntime releases the GIL while it computes, so
the loop keeps accepting requests meanwhile (the Triton/TorchServe "max queue delay"
design). Two workers on one single-threaded session keep two cores busy without
onnxruntime's intra-op threads, whose spin-waiting takes the CPU the event loop and the
decoders need on a small machine (measured in bench/serve.py).

Admission is all-or-nothing and never blocks: a full queue raises `QueueFull` at once, so
the caller can answer 503 + Retry-After instead of letting latency grow without bound.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

log = logging.getLogger("sightwise.serve")


class QueueFull(Exception):
    """The queue has no room for the submitted items."""


class BatcherClosed(Exception):
    """The batcher is shutting down and takes no new work."""


@dataclass
class _Item:
    key: Hashable
    payload: object
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


Process = Callable[[Hashable, list], Sequence]


class Batcher:
    """Run `process(key, payloads) -> results` (one result per payload) on batches.

    >>> b = Batcher(lambda key, xs: [key * x for x in xs], max_batch=4, window_ms=1)
    >>> b.start(); futures = b.submit(10, [1, 2, 3])
    >>> [f.result(timeout=5) for f in futures]
    [10, 20, 30]
    >>> b.close()
    """

    def __init__(self, process: Process, *, max_batch: int = 16, window_ms: float = 2.0,
                 max_queue: int = 256, workers: int = 1,
                 on_batch: Callable[[int], None] | None = None):
        if max_batch < 1 or max_queue < 1 or workers < 1 or window_ms < 0:
            raise ValueError("max_batch, max_queue and workers must be >= 1, window_ms >= 0")
        self.process = process
        self.max_batch, self.max_queue, self.workers = int(max_batch), int(max_queue), int(workers)
        self.window_s = float(window_ms) / 1000.0
        self.on_batch = on_batch
        self._items: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        if not self._threads:
            self._threads = [threading.Thread(target=self._loop, name=f"sightwise-batcher-{i}",
                                              daemon=True) for i in range(self.workers)]
            for t in self._threads:
                t.start()

    def depth(self) -> int:
        """Items waiting (not yet taken by the worker)."""
        return len(self._items)

    def submit(self, key: Hashable, payloads: Sequence) -> list[Future]:
        """Queue every payload under `key`, or none of them (QueueFull / BatcherClosed)."""
        items = [_Item(key, p) for p in payloads]
        with self._cond:
            if self._closed:
                raise BatcherClosed("server is shutting down")
            if len(self._items) + len(items) > self.max_queue:
                raise QueueFull(f"queue full ({len(self._items)} of {self.max_queue} waiting)")
            self._items.extend(items)
            self._cond.notify()
        return [it.future for it in items]

    def close(self, timeout: float = 30.0) -> None:
        """Take no new work, finish what is queued, stop the workers."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads = []

    def _take(self) -> list[_Item] | None:
        """Block for the next batch; None once closed and drained."""
        with self._cond:
            while not self._items:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._items[0].arrived + self.window_s
            while len(self._items) < self.max_batch and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            n = min(self.max_batch, len(self._items))
            return [self._items.popleft() for _ in range(n)]

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            # A request that timed out or disconnected cancelled its futures: skip them.
            live = [it for it in batch if it.future.set_running_or_notify_cancel()]
            groups: dict[Hashable, list[_Item]] = {}
            for it in live:
                groups.setdefault(it.key, []).append(it)
            for key, items in groups.items():
                self._run(key, items)

    def _run(self, key: Hashable, items: list[_Item]) -> None:
        try:
            results = self.process(key, [it.payload for it in items])
            if len(results) != len(items):
                raise RuntimeError(f"process returned {len(results)} results for {len(items)}")
        except Exception as exc:  # the worker must outlive any one bad batch
            log.exception("batch of %d failed", len(items))
            for it in items:
                it.future.set_exception(exc)
            return
        if self.on_batch is not None:
            self.on_batch(len(items))
        for it, res in zip(items, results, strict=True):
            it.future.set_result(res)
