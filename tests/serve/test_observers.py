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
