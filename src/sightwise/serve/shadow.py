"""`serve --model NAME@production --shadow NAME@staging`: the candidate answers a copy of the
traffic, off the request path, and both answers go to the shadow log (sightwise.shadowlog)
that `sightwise pipeline` and `models promote --require-shadow N` read.

The shadow is a prediction observer (observers.py): it gets the upload's bytes after the
primary model has answered, decodes them itself (the candidate may have other
preprocessing), and runs the candidate's ONNX graph in the observer's own thread with one
onnxruntime thread. It can therefore never slow, change or fail an answer: when it falls
behind, its bounded queue drops events (counted in /metrics); when it fails, the record
carries the error. With the prediction log on, the candidate's predictions are also
logged under its own version and reference, so its label-free accuracy is monitored on
live traffic before it is promoted.

A watched alias (NAME@staging) is re-read at most every `watch_interval_s`; a new version
is loaded (and verified against the registry's record) before it shadows.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import numpy as np

from sightwise.core import parse_model_ref, top_k_indices
from sightwise.data.decode import decode_image
from sightwise.serve.logs import RateLimitedLog
from sightwise.serve.observers import PredictionEvent
from sightwise.shadowlog import ShadowWriter, shadow_record

log = logging.getLogger("sightwise.serve")


class ShadowObserver:
    """Runs the registry model `ref` on every predicted image and logs both answers."""

    name = "shadow"
    wants_image_bytes = True

    def __init__(self, ref: str, *, watch_interval_s: float = 5.0, monitor_log=None,
                 writer: ShadowWriter | None = None):
        self.registry_name, self.alias, self.pinned = parse_model_ref(ref)
        self.ref = ref
        self.watch_interval_s = float(watch_interval_s)
        self.monitor_log = monitor_log
        self.writer = writer or ShadowWriter(self.registry_name)
        self.counts: Counter[str] = Counter()
        self._predictor, self._version, self._checked = None, None, float("-inf")
        self._warn = RateLimitedLog(log.warning)
        self._refresh(force=True)  # a shadow that cannot load fails start-up, in one line
        if self._predictor is None:
            from sightwise.errors import SightwiseError

            raise SightwiseError(f"--shadow {ref}: no version to shadow with")

    def _refresh(self, force: bool = False) -> None:
        """Load the version the reference names now (a pinned one once)."""
        now = time.monotonic()
        if not force and (self.pinned is not None or now - self._checked < self.watch_interval_s):
            return
        self._checked = now
        from sightwise.registry.resolve import current_version, open_version
        from sightwise.runtime import Predictor

        if self.pinned is not None:
            version = self.pinned
        else:
            held = current_version(self.registry_name, self.alias)
            if held is None:
                self._predictor, self._version = None, None
                return
            version = held[0]
        if version != self._version:
            bundle = open_version(self.registry_name, version)  # verified as registered
            self._predictor, self._version = Predictor(bundle, threads=1, batch_size=1), version
            log.info("shadowing with %s v%s", self.registry_name, version)

    def __call__(self, event: PredictionEvent) -> None:
        if not isinstance(event.version, int) or not event.classes:
            self.counts["skipped"] += 1  # only registry versions are compared
            return
        primary = int(top_k_indices(event.probabilities, 1)[0])
        fields = dict(model=self.registry_name, primary_version=event.version,
                      primary_label=event.classes[primary],
                      primary_p=float(event.probabilities[primary]), sha256=event.image_sha256)
        try:
            self._refresh()
            if self._predictor is None:
                self.counts["no_shadow"] += 1
                return
            if self._version == event.version:
                # The candidate was promoted: it now answers the traffic itself, and a
                # record comparing it with itself would only double-count its images.
                self.counts["same_version"] += 1
                return
            image = decode_image(event.image_bytes)
            probs, emb = self._outputs(image)
            top = int(top_k_indices(probs, 1)[0])
            record = shadow_record(shadow_version=self._version,
                                   shadow_label=self._predictor.classes[top],
                                   shadow_p=float(probs[top]), **fields)
            if self.monitor_log is not None:
                self.monitor_log.observe(bundle=self._predictor.bundle, model=self.registry_name,
                                         version=self._version, probs=probs[None, :],
                                         embeddings=emb[None, :], sha256s=[event.image_sha256])
        except Exception as exc:  # noqa: BLE001 - recorded: a failing candidate is news
            self.counts["errors"] += 1
            self._warn.warning("shadow", "the shadow model failed: %s", exc)
            if self._version is None:
                return
            record = shadow_record(shadow_version=self._version,
                                   shadow_error=str(exc)[:300], **fields)
        self.counts["recorded" if self.writer.append(record) else "dropped"] += 1

    def _outputs(self, image) -> tuple[np.ndarray, np.ndarray]:
        from sightwise.core import softmax

        p = self._predictor
        out = p.run(p.preprocess([image]), ["logits", "embedding"])
        return softmax(out["logits"], p.temperature)[0], out["embedding"][0]

    def close(self) -> None:
        self.writer.close()
