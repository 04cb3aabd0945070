"""Monitoring inside a predicting process (the server, `predict --log`): one object to wire.

`MonitorLog` owns the `PredictionLog`, loads each served bundle's reference once, turns a
batch of outputs into records (`observe`) and, with `live=True`, runs the window tests as
windows fill (`LiveMonitor`, in the log's writer thread, off the request path): alerts
write the labelling queue and call the webhook (in a thread of their own), and `gauges()`
and `summary()` answer /metrics and GET /v1/monitor from memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path

import numpy as np

from sightwise.bundle import Bundle, load_bundle
from sightwise.monitor.alerts import alert_event, post_webhook, queue_items, write_queue_entry
from sightwise.monitor.log import DEFAULT_MAX_BYTES, DEFAULT_RETAIN_S, PredictionLog
from sightwise.monitor.reference import REFERENCE, Reference, load_reference
from sightwise.monitor.windows import DEFAULT_CONFIG, MonitorConfig, WindowTester, window_arrays

log = logging.getLogger("sightwise.monitor")


def default_log_dir(model: str) -> Path:
    """$SIGHTWISE_HOME/logs/<model> (SIGHTWISE_HOME defaults to ~/.sightwise)."""
    from sightwise.registry.store import sightwise_home

    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(model)).strip(".")
    return sightwise_home() / "logs" / (safe or "model")


def make_records(*, model: str, version, probs, embeddings=None, reference: Reference | None = None,
                 sha256s, latencies_ms=None, sources=None, t: float | None = None) -> list[dict]:
    """Prediction-log records for one batch: calibrated probabilities, the
    PCA-projected embedding and the outlier score `d2` (when a reference and embeddings are
    given), sha256, latency in ms, and the file's path when `sources` are given."""
    probs = np.asarray(probs, np.float64)
    have = reference is not None and embeddings is not None
    proj = reference.project(embeddings) if have else None
    d2 = reference.outlier_scores(embeddings, sha256s) if have else None
    t = time.time() if t is None else float(t)
    ref_id = reference.meta.get("id") if reference is not None else None
    out = []
    for i, p in enumerate(probs):
        rec = {"t": t, "model": str(model), "version": str(version), "ref": ref_id,
               "probs": sig7(p),
               "proj": None if proj is None else sig7(proj[i]),
               "d2": None if d2 is None else round(float(d2[i]), 4),
               "sha256": sha256s[i],
               "ms": None if latencies_ms is None else round(float(latencies_ms[i]), 3)}
        if sources is not None and sources[i] is not None:
            rec["source"] = str(sources[i])
        out.append(rec)
    return out


def sig7(values) -> list[float]:
    """Floats at 7 significant digits (float32's precision): a probability of 1e-9 must stay
    1e-9, not become 0, or the KS test would see a difference the model never made.

    >>> sig7(np.array([0.123456789, 1.23456789e-9, 0.0, -2.5e3]))
    [0.1234568, 1.234568e-09, 0.0, -2500.0]
    """
    x = np.asarray(values, np.float64).ravel()
    with np.errstate(divide="ignore"):
        digits = 6 - np.floor(np.log10(np.abs(x)))
    scale = 10.0 ** np.where(np.isfinite(digits), digits, 0)
    return (np.round(x * scale) / scale).tolist()


def record_from_prediction(*, model: str, version, probs, embedding=None,
                           reference: Reference | None = None, sha256: str,
                           latency_ms: float | None = None, source: str | None = None,
                           t: float | None = None) -> dict:
    """One record (see `make_records`) for one image's probabilities (C,) and embedding (D,)."""
    emb = None if embedding is None else np.asarray(embedding)[None, :]
    return make_records(model=model, version=version, probs=np.asarray(probs)[None, :],
                        embeddings=emb, reference=reference, sha256s=[sha256],
                        latencies_ms=None if latency_ms is None else [latency_ms],
                        sources=None if source is None else [source], t=t)[0]


class LiveMonitor:
    """Tumbling windows over the records as they are written; tests each full window."""

    def __init__(self, config: MonitorConfig = DEFAULT_CONFIG, *, queue_dir=None,
                 webhook: str | None = None, log_dir=None, history: int = 500):
        self.config, self.queue_dir, self.webhook = config, queue_dir, webhook
        self.log_dir = log_dir
        self.references: dict[str, tuple[Reference, str]] = {}  # ref id -> (ref, model)
        self.windows: deque = deque(maxlen=history)
        self.alerts = 0
        self._lock = threading.Lock()
        self._current: list[dict] = []
        self._ref_id: str | None = None
        self._tester: WindowTester | None = None
        self._recent_records: deque = deque(maxlen=config.alert_of)  # drifted windows' records
        self._index = 0

    def register(self, ref: Reference, model: str) -> None:
        self.references[ref.meta["id"]] = (ref, model)

    def add(self, records: list[dict]) -> None:
        for rec in records:
            ref_id = rec.get("ref")
            if ref_id is None or ref_id not in self.references:
                continue
            if ref_id != self._ref_id:
                self._switch(ref_id)
            if self._current and rec["t"] - self._current[0]["t"] > self.config.max_age_s:
                self._close(self._current)
                self._current = []
            self._current.append(rec)
            if len(self._current) >= self.config.window:
                self._close(self._current)
                self._current = []

    def _switch(self, ref_id: str) -> None:
        """A new model version: its embeddings are not comparable with the old reference."""
        ref, _ = self.references[ref_id]
        self._ref_id, self._tester = ref_id, WindowTester(ref, self.config)
        self._current = []
        self._recent_records.clear()
        with self._lock:
            self.windows.clear()

    def _close(self, recs: list[dict]) -> None:
        probs, proj, d2 = window_arrays(recs)
        if len(probs) < self.config.min_n:
            return
        w = {"index": self._index, "start": recs[0]["t"], "end": recs[-1]["t"],
             "complete": True, "reference": self._ref_id,
             "model": recs[-1].get("model"), "version": recs[-1].get("version"),
             **self._tester.test(probs, proj, d2, seed=self.config.seed * 1_000_003 + self._index),
             "n": len(recs), "n_distinct": len(probs)}
        self._index += 1
        self._recent_records.append((w, recs))
        with self._lock:
            before = bool(self.windows) and self.windows[-1]["alert"]
            self.windows.append(w)
            recent = [x["drift"] for x in list(self.windows)[-self.config.alert_of:]]
            w["alert"] = sum(recent) >= self.config.alert_k
            w["alert_start"] = w["alert"] and not before
            self.alerts += int(w["alert_start"])
        if w["alert"]:
            self._on_alert(w)

    def _on_alert(self, w: dict) -> None:
        ref, model = self.references[self._ref_id]
        drifted = [(x, r) for x, r in self._recent_records if x["drift"]]
        try:
            if self.queue_dir is not None and drifted:
                records = [rec for _, recs in drifted for rec in recs]
                where = {rec.get("sha256"): x["index"] for x, recs in drifted for rec in recs}
                event = alert_event(w, [x for x, _ in drifted], model=model,
                                    version=w.get("version"), ref_id=self._ref_id,
                                    classes=ref.meta.get("classes", []))
                write_queue_entry(self.queue_dir, event,
                                  queue_items(records, where, ref.meta.get("classes", []), ref),
                                  self.log_dir)
        except Exception as exc:  # noqa: BLE001 - a queue failure must not stop monitoring
            log.warning("cannot write the labelling queue: %s", exc)
        if self.webhook and w["alert_start"]:
            event = alert_event(w, [x for x, _ in drifted], model=model,
                                version=w.get("version"), ref_id=self._ref_id,
                                classes=ref.meta.get("classes", []))
            threading.Thread(target=post_webhook, args=(self.webhook, event), daemon=True).start()

    def summary(self, last: int = 50) -> dict:
        with self._lock:
            windows = [strip(w) for w in list(self.windows)[-last:]]
            alerts = self.alerts
        return {"windows": windows, "alerts": alerts, "reference": self._ref_id,
                "pending": len(self._current), "config": asdict(self.config)}


def strip(window: dict) -> dict:
    """A window as JSON shows it: without the records a drifted window keeps for the queue."""
    return {k: v for k, v in window.items() if k != "records"}


class MonitorLog:
    """What a predicting process holds: the prediction log, each bundle's reference and,
    with `live`, the live monitor. Every method is safe to call on the request path."""

    def __init__(self, log_dir: str | Path, *, keep_images: bool = False,
                 retain_s: float = DEFAULT_RETAIN_S, max_bytes: int = DEFAULT_MAX_BYTES,
                 live: bool = True, config: MonitorConfig = DEFAULT_CONFIG,
                 queue_dir: str | Path | None = None, webhook: str | None = None, **log_options):
        self.log_dir = Path(log_dir)
        queue_dir = self.log_dir / "labelling-queue" if queue_dir is None else Path(queue_dir)
        self.live = (LiveMonitor(config, queue_dir=queue_dir, webhook=webhook,
                                 log_dir=self.log_dir) if live else None)
        self.log = PredictionLog(self.log_dir, keep_images=keep_images, retain_s=retain_s,
                                 max_bytes=max_bytes,
                                 on_write=self.live.add if self.live else None, **log_options)
        self._refs: dict[str, Reference | None] = {}

    def reference_for(self, bundle: Bundle | str | Path, model: str) -> Reference | None:
        """The bundle's reference, loaded once per bundle folder (as named); None when it has
        none. A bundle is immutable once served, so the cache never goes stale."""
        key = str(bundle.path if isinstance(bundle, Bundle) else bundle)
        if key not in self._refs:
            try:
                b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, verify=False)
                ref = load_reference(b) if REFERENCE in b.meta.files else None
                if ref is None:
                    log.warning("%s has no %s: predictions are logged without drift tests; "
                                "build it with `sightwise monitor reference`", b.path, REFERENCE)
                elif self.live is not None:
                    self.live.register(ref, model)
            except Exception as exc:  # noqa: BLE001 - log without drift rather than fail
                log.warning("cannot load the reference of %s: %s", bundle, exc)
                ref = None
            self._refs[key] = ref
        return self._refs[key]

    def observe(self, *, bundle: Bundle | str | Path, model: str, version, probs,
                embeddings=None, sha256s, latencies_ms=None, sources=None,
                images: list[bytes] | None = None) -> int:
        """Log one batch; returns how many records were queued. Never raises."""
        try:
            ref = self.reference_for(bundle, model)
            recs = make_records(model=model, version=version, probs=probs,
                                embeddings=embeddings, reference=ref, sha256s=sha256s,
                                latencies_ms=latencies_ms, sources=sources)
            return sum(self.log.append(r, images[i] if images is not None else None)
                       for i, r in enumerate(recs))
        except Exception as exc:  # noqa: BLE001 - a prediction never fails for its log
            log.warning("prediction not logged: %s", exc)
            return 0

    def gauges(self) -> dict[str, float]:
        from sightwise.monitor.report import prometheus_gauges

        summary = self.live.summary(last=1) if self.live else {"windows": [], "alerts": 0}
        return prometheus_gauges(summary, self.log.status())

    def summary(self, last: int = 50) -> dict:
        out = self.live.summary(last) if self.live else {"windows": [], "alerts": 0}
        return {**out, "log": self.log.status()}

    def close(self, timeout: float = 10.0) -> None:
        self.log.close(timeout)

    def __enter__(self) -> MonitorLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
