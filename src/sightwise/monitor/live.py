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
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field
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


@dataclass
class _Stream:
    """The windows of one model version against its reference."""

    ref_id: str
    version: str | None
    model: str | None
    tester: WindowTester
    windows: deque
    recent: deque                      # (window, records) of the last alert_of windows
    current: list = field(default_factory=list)
    index: int = 0


class LiveMonitor:
    """Tumbling windows over the records as they are written; tests each full window.

    Each (reference, model version) has its windows of its own: a new version's
    probabilities and embeddings are not comparable with the old one's, and around a hot
    swap the two versions' records interleave for a moment, so each goes to its own
    windows and neither is cut short. `summary()` shows the version of the latest record.
    """

    MAX_STREAMS = 8  # versions kept at once; the least recently seen goes first

    def __init__(self, config: MonitorConfig = DEFAULT_CONFIG, *, queue_dir=None,
                 webhook: str | None = None, log_dir=None, history: int = 500):
        self.config, self.queue_dir, self.webhook = config, queue_dir, webhook
        self.log_dir = log_dir
        self.history = history
        self.references: dict[str, tuple[Reference, str]] = {}  # ref id -> (ref, model)
        self.alerts = 0
        self._lock = threading.Lock()
        self._streams: OrderedDict[tuple, _Stream] = OrderedDict()
        self._active: _Stream | None = None

    def register(self, ref: Reference, model: str) -> None:
        self.references[ref.meta["id"]] = (ref, model)

    @property
    def windows(self) -> deque:
        """The windows of the version seen last (empty before any)."""
        return self._active.windows if self._active is not None else deque()

    def add(self, records: list[dict]) -> None:
        for rec in records:
            ref_id = rec.get("ref")
            if ref_id is None or ref_id not in self.references:
                continue
            s = self._stream(ref_id, rec)
            if s.current and rec["t"] - s.current[0]["t"] > self.config.max_age_s:
                self._close(s, s.current)
                s.current = []
            s.current.append(rec)
            if len(s.current) >= self.config.window:
                self._close(s, s.current)
                s.current = []

    def _stream(self, ref_id: str, rec: dict) -> _Stream:
        key = (ref_id, rec.get("version"))
        s = self._streams.get(key)
        if s is None:
            ref, _ = self.references[ref_id]
            s = _Stream(ref_id, rec.get("version"), rec.get("model"),
                        WindowTester(ref, self.config), deque(maxlen=self.history),
                        deque(maxlen=self.config.alert_of))
            with self._lock:
                self._streams[key] = s
                while len(self._streams) > self.MAX_STREAMS:
                    self._streams.popitem(last=False)
        self._streams.move_to_end(key)
        self._active = s
        return s

    def _close(self, s: _Stream, recs: list[dict]) -> None:
        probs, proj, d2 = window_arrays(recs)
        if len(probs) < self.config.min_n:
            return
        w = {"index": s.index, "start": recs[0]["t"], "end": recs[-1]["t"],
             "complete": True, "reference": s.ref_id,
             "model": recs[-1].get("model"), "version": recs[-1].get("version"),
             **s.tester.test(probs, proj, d2, seed=self.config.seed * 1_000_003 + s.index),
             "n": len(recs), "n_distinct": len(probs)}
        s.index += 1
        s.recent.append((w, recs))
        with self._lock:
            before = bool(s.windows) and s.windows[-1]["alert"]
            s.windows.append(w)
            recent = [x["drift"] for x in list(s.windows)[-self.config.alert_of:]]
            w["alert"] = sum(recent) >= self.config.alert_k
            w["alert_start"] = w["alert"] and not before
            self.alerts += int(w["alert_start"])
        if w["alert"]:
            self._on_alert(s, w)

    def _on_alert(self, s: _Stream, w: dict) -> None:
        ref, model = self.references[s.ref_id]
        drifted = [(x, r) for x, r in s.recent if x["drift"]]
        classes = ref.meta.get("classes", [])
        event = alert_event(w, [x for x, _ in drifted], model=model, version=w.get("version"),
                            ref_id=s.ref_id, classes=classes)
        try:
            if self.queue_dir is not None and drifted:
                records = [rec for _, recs in drifted for rec in recs]
                where = {rec.get("sha256"): x["index"] for x, recs in drifted for rec in recs}
                write_queue_entry(self.queue_dir, event,
                                  queue_items(records, where, classes, ref), self.log_dir)
        except Exception as exc:  # noqa: BLE001 - a queue failure must not stop monitoring
            log.warning("cannot write the labelling queue: %s", exc)
        if self.webhook and w["alert_start"]:
            threading.Thread(target=post_webhook, args=(self.webhook, event), daemon=True).start()

    def summary(self, last: int = 50) -> dict:
        """The windows of the version seen last, the alerts of all, and what is pending."""
        with self._lock:
            s = self._active
            windows = [strip(w) for w in list(s.windows)[-last:]] if s else []
            alerts = self.alerts
        ref = self.references[s.ref_id][0] if s else None
        return {"windows": windows, "alerts": alerts, "reference": s.ref_id if s else None,
                "model": s.model if s else None, "version": s.version if s else None,
                "reference_accuracy": ref.stats.get("accuracy") if ref else None,
                "pending": len(s.current) if s else 0, "config": asdict(self.config)}


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
