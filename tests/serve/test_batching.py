"""The batcher on its own: batches form within the window, never exceed max_batch or mix
keys, admission is all-or-nothing, and one failing batch does not stop the worker.

Windows are a minute long, so nothing here depends on how fast this machine is: a batch
is released by filling up or by close(), and the tests wait on futures and events."""

from __future__ import annotations

import threading
import time

import pytest

from sightwise.serve.batching import Batcher, BatcherClosed, QueueFull


def recording(delay: float = 0.0):
    calls: list[tuple] = []

    def process(key, payloads):
        calls.append((key, list(payloads)))
        time.sleep(delay)
        return [(key, p) for p in payloads]

    return process, calls


def test_items_within_the_window_run_as_one_batch():
    process, calls = recording()
    b = Batcher(process, max_batch=16, window_ms=60_000)
    b.start()
    futures = b.submit("m", [1, 2])
    futures += b.submit("m", [3])
    assert not any(f.done() for f in futures)  # waiting for the window to fill
    b.close()  # releases the batch still inside its window
    assert [f.result(timeout=30) for f in futures] == [("m", 1), ("m", 2), ("m", 3)]
    assert calls == [("m", [1, 2, 3])]


def test_a_full_batch_does_not_wait_for_the_window():
    process, calls = recording()
    b = Batcher(process, max_batch=4, window_ms=60_000)
    b.start()
    futures = b.submit("m", list(range(10)))
    # Within the minute-long window only a full batch can have run.
    assert futures[3].result(timeout=30) == ("m", 3)
    assert not futures[9].done()
    b.close()  # closing releases the partial batch that is still waiting
    assert [f.result(timeout=5)[1] for f in futures] == list(range(10))
    assert [len(p) for _, p in calls] == [4, 4, 2]


def test_keys_are_never_mixed_in_one_process_call():
    process, calls = recording()
    b = Batcher(process, max_batch=4, window_ms=60_000)
    b.start()
    fa = b.submit("old", [1, 2])
    fb = b.submit("new", [3])
    fc = b.submit("old", [4])  # the batch is full: it runs now, grouped by key
    assert [f.result(timeout=30) for f in fa + fb + fc] == [
        ("old", 1), ("old", 2), ("new", 3), ("old", 4)]
    b.close()
    assert sorted(calls) == [("new", [3]), ("old", [1, 2, 4])]


def test_a_full_queue_refuses_everything_at_once():
    gate, started = threading.Event(), threading.Event()

    def slow(key, payloads):
        started.set()
        gate.wait(30)
        return payloads

    b = Batcher(slow, max_batch=1, window_ms=0, max_queue=3)
    b.start()
    first = b.submit("m", [0])
    assert started.wait(30)  # the worker holds item 0, the queue is empty again
    b.submit("m", [1, 2])
    with pytest.raises(QueueFull):
        b.submit("m", [3, 4])  # 2 + 2 > 3: none of them is queued (and nothing blocks)
    assert b.depth() == 2
    gate.set()
    assert first[0].result(timeout=30) == 0
    b.close()
    with pytest.raises(BatcherClosed):
        b.submit("m", [5])


def test_a_failing_batch_fails_only_its_items_and_the_worker_lives_on():
    def process(key, payloads):
        if "bad" in payloads:
            raise ValueError("boom")
        return payloads

    b = Batcher(process, max_batch=2, window_ms=0)
    b.start()
    bad = b.submit("m", ["bad"])[0]
    with pytest.raises(ValueError, match="boom"):
        bad.result(timeout=5)
    assert b.submit("m", ["ok"])[0].result(timeout=5) == "ok"
    b.close()


def test_cancelled_items_are_skipped():
    process, calls = recording()
    b = Batcher(process, max_batch=8, window_ms=60_000)
    b.start()
    keep, drop = b.submit("m", ["keep", "drop"])
    assert drop.cancel()  # still inside its window: not taken yet
    b.close()
    assert keep.result(timeout=30) == ("m", "keep")
    assert calls == [("m", ["keep"])]


def test_close_drains_queued_work_and_batch_sizes_are_reported():
    sizes: list[int] = []
    process, _ = recording(delay=0.01)
    b = Batcher(process, max_batch=3, window_ms=50, on_batch=sizes.append)
    b.start()
    futures = b.submit("m", list(range(7)))
    b.close()
    assert all(f.done() for f in futures) and sum(sizes) == 7 and max(sizes) <= 3


def test_arguments_are_checked():
    with pytest.raises(ValueError):
        Batcher(lambda k, p: p, max_batch=0)
    with pytest.raises(ValueError):
        Batcher(lambda k, p: p, window_ms=-1)
