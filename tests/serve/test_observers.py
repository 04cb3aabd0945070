"""Prediction observers (the hook for a prediction log, a shadow model, an audit trail):
each is called once per predicted image, off the request path, with what the answer was
computed from; one that raises is counted and never reaches a request."""

from __future__ import annotations

import hashlib
import threading
import time

import numpy as np
from sw_serve_helpers import app_for, client_for, files

from sightwise.data.decode import decode_image
from sightwise.runtime import Predictor


class Recorder:
    wants_embedding = True

    def __init__(self):
        self.events, self.seen = [], threading.Event()

    def __call__(self, event):
        self.events.append(event)
        self.seen.set()


def broken(event):
    raise RuntimeError("observer bug")


def _wait_for(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_observers_see_each_prediction_and_a_broken_one_is_only_counted(served_bundle,
                                                                        sample_images):
    rec = Recorder()
    app = app_for(served_bundle, name="parts", version=3, observers=[broken, rec])
    reference = Predictor(served_bundle)
    with client_for(app) as c:
        r = c.post("/v1/predict?top_k=1", files=files(*sample_images[:2]))
        assert r.status_code == 200
        _wait_for(lambda: len(rec.events) == 2)
        metrics = c.get("/metrics").text
    images = [decode_image(data) for _, data in sample_images[:2]]
    probs = reference.probabilities(images)
    embeddings = reference.embed(images)
    for event, (name, data), p, e in zip(rec.events, sample_images, probs, embeddings, strict=False):
        assert (event.model, event.version, event.filename) == ("parts", 3, name)
        assert event.image_sha256 == hashlib.sha256(data).hexdigest()
        np.testing.assert_allclose(event.probabilities, p, atol=1e-5)
        np.testing.assert_allclose(event.embedding, e, atol=1e-4)
        assert event.latency_s >= 0 and event.model_input.shape[2] == 3
    assert 'sightwise_observer_events_total{outcome="errors"} 2.0' in metrics
    assert 'sightwise_observer_events_total{outcome="delivered"} 2.0' in metrics


def test_a_slow_observer_never_holds_up_an_answer(served_bundle, sample_images):
    gate = threading.Event()

    def stuck(event):
        gate.wait(60)

    app = app_for(served_bundle, observers=[stuck])
    with client_for(app) as c:
        for _ in range(3):  # answered while the observer is still stuck on the first event
            assert c.post("/v1/predict", files=files(sample_images[0])).status_code == 200
        gate.set()


def _event(i: int, data: bytes | None = None):
    from sightwise.serve.observers import PredictionEvent

    return PredictionEvent("m", 1, f"{i}.png", np.array([0.5, 0.5]), None, f"{i:064x}", 0.001,
                           time.time(), image_bytes=data)


def test_a_stuck_observer_loses_only_its_own_events_and_its_queue_is_bounded():
    """Each observer has its own queue (here 2 events) and thread: while one is stuck,
    the other gets every event; the stuck one's extra events are dropped and counted."""
    from sightwise.serve.observers import Observers

    entered, gate = threading.Event(), threading.Event()

    def stuck(event):
        entered.set()
        gate.wait(60)

    rec = Recorder()
    observers = Observers([stuck, rec], max_queue=2)
    observers.start()
    try:
        observers.notify([_event(0)])
        assert entered.wait(30)  # the first event is being handled: the queue is empty
        for i in range(1, 5):  # 2 fit the stuck one's queue, 2 do not
            observers.notify([_event(i)])
            _wait_for(lambda i=i: len(rec.events) == i + 1)  # the other keeps up
        status = observers.status()
        assert status["stuck"] == {"delivered": 0, "dropped": 2, "errors": 0, "pending": 2}
        assert status["Recorder"]["dropped"] == 0 and observers.counts["dropped"] == 2
    finally:
        gate.set()
        observers.close(timeout=30)
    assert observers.status()["stuck"]["delivered"] == 3


def test_image_bytes_in_a_queue_are_bounded():
    from sightwise.serve.observers import Observers

    entered, gate = threading.Event(), threading.Event()

    def keeper(event):
        entered.set()
        gate.wait(60)

    keeper.wants_image_bytes = True
    observers = Observers([keeper], max_queue=100, max_queue_bytes=250)
    assert observers.wants_image_bytes and not observers.wants_embedding
    observers.start()
    try:
        observers.notify([_event(0, bytes(100))])
        assert entered.wait(30)
        observers.notify([_event(i, bytes(100)) for i in range(1, 5)])  # 200 bytes fit
        assert observers.status()["keeper"]["dropped"] == 2
    finally:
        gate.set()
        observers.close(timeout=30)
