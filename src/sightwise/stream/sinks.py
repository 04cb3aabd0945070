"""Where a watch's results go: one small interface, one class per destination.

The runner calls, in this order and from one thread:
`start(info)` once; then per processed frame `frame(p)`, then `event_opened(ev)` /
`event_closed(ev)` for the events that frame opened or closed; `note(record)` for outages,
gaps and warnings; at the end (also after SIGTERM) `flush()` (finish pending work), then
`note(summary)` with every sink's `stats()` in it, then `close()`.
Every hook defaults to doing nothing, so a sink overrides only what it needs. Sinks run in
the order given; the frames sink goes first so the paths of the images it saves are on the
event when the JSONL sink writes it. A sink reports its own counters through `stats()`.

Adding a destination is one subclass: map `frame(p)` and `event_closed(ev)` onto its API,
as `PredictionLogSink` does for the prediction log (`watch --log DIR`).
"""

from __future__ import annotations

import json
import os
import queue
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from sightwise.core import atomic_write_bytes, sha256_bytes, softmax
from sightwise.stream.events import Event
from sightwise.stream.models import FrameResult


@dataclass
class Processed:
    """One processed frame, as sinks receive it."""
    record: dict             # the frame's JSON record (type "frame")
    image: Image.Image       # the decoded RGB frame
    result: FrameResult      # the model's answer (scores, hits, heat-map data)
    active: tuple[str, ...]  # labels with an open event after this frame


class Sink:
    def start(self, info: dict) -> None: ...
    def frame(self, p: Processed) -> None: ...
    def event_opened(self, ev: Event) -> None: ...
    def event_closed(self, ev: Event) -> None: ...
    def note(self, record: dict) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...

    def stats(self) -> dict:
        return {}


class JsonlSink(Sink):
    """One JSON object per line, appended. Each line goes out in one write() on an
    unbuffered descriptor, so a process killed at any moment (kill -9) leaves only whole
    lines behind. `path` None writes to stdout; `frames=False` leaves out frame records."""

    def __init__(self, path: str | Path | None, *, frames: bool = True):
        self.frames = frames
        self.path = Path(path) if path is not None else None
        self.fd: int | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.lines = 0

    def write(self, obj: dict) -> None:
        line = json.dumps(obj, separators=(",", ":")) + "\n"
        if self.fd is None:  # stdout: a text stream, flushed line by line
            sys.stdout.write(line)
            sys.stdout.flush()
        else:
            view = memoryview(line.encode("utf-8"))
            while view:  # write() may take part of it (a signal, a full disk); finish the line
                view = view[os.write(self.fd, view):]
        self.lines += 1

    def start(self, info: dict) -> None:
        self.write({"type": "start", **info})

    def frame(self, p: Processed) -> None:
        if self.frames:
            self.write(p.record)

    def event_opened(self, ev: Event) -> None:
        self.write(ev.to_record("event_open"))

    def event_closed(self, ev: Event) -> None:
        self.write(ev.to_record("event"))

    def note(self, record: dict) -> None:
        self.write(record)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def stats(self) -> dict:
        return {"jsonl_lines": self.lines}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60] or "label"


class FramesSink(Sink):
    """Saves each closed event's peak frame and the frame with its heat map, as
    `event_0001_<label>_peak.jpg` and `..._heat.jpg` in `folder`; the paths go on the event."""

    def __init__(self, folder: str | Path, model, quality: int = 92):
        self.folder, self.model, self.quality = Path(folder), model, quality
        self.folder.mkdir(parents=True, exist_ok=True)
        self.saved = 0

    def _save(self, image: Image.Image, name: str) -> str:
        import io

        buf = io.BytesIO()
        image.convert("RGB").save(buf, "JPEG", quality=self.quality)
        return str(atomic_write_bytes(self.folder / name, buf.getvalue()))

    def event_closed(self, ev: Event) -> None:
        if ev.peak_payload is None:
            return
        image, result = ev.peak_payload
        stem = f"event_{ev.id:04d}_{_safe(ev.label)}"
        ev.images["peak"] = self._save(image, f"{stem}_peak.jpg")
        ev.images["heat"] = self._save(self.model.heat_overlay(image, ev.label, result),
                                       f"{stem}_heat.jpg")
        self.saved += 2

    def stats(self) -> dict:
        return {"images_saved": self.saved}


class WebhookSink(Sink):
    """POSTs each event (on opening and on closing) as JSON to `url`, from a background
    thread with a `timeout` per request and at most `max_pending` waiting: a slow or dead
    receiver costs alerts (counted), never frames, and never stops the watch."""

    def __init__(self, url: str, *, timeout: float = 2.0, max_pending: int = 64):
        if not url.lower().startswith(("http://", "https://")):
            raise ValueError(f"--alert-webhook must be an http(s) URL, got {url!r}")
        self.url, self.timeout = url, float(timeout)
        self.pending: queue.Queue = queue.Queue(max_pending)
        self.sent = self.failed = self.dropped = 0
        self.last_error: str | None = None
        self.thread = threading.Thread(target=self._post_loop, name="webhook", daemon=True)
        self.thread.start()

    def _queue(self, record: dict) -> None:
        try:
            self.pending.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def event_opened(self, ev: Event) -> None:
        self._queue(ev.to_record("event_open"))

    def event_closed(self, ev: Event) -> None:
        self._queue(ev.to_record("event"))

    def _post_loop(self) -> None:
        while (record := self.pending.get()) is not None:
            req = urllib.request.Request(self.url, data=json.dumps(record).encode("utf-8"),
                                         headers={"Content-Type": "application/json"},
                                         method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    resp.read(1 << 16)
                self.sent += 1
            except (urllib.error.URLError, OSError, ValueError) as exc:
                self.failed += 1
                self.last_error = str(getattr(exc, "reason", exc))

    def flush(self) -> None:
        """Send what is waiting, for at most a few timeouts, then let the rest go."""
        try:
            self.pending.put(None, timeout=self.timeout)
        except queue.Full:
            pass
        self.thread.join(timeout=3 * self.timeout + 1)
        if self.thread.is_alive():  # the receiver is too slow: what still waits is lost
            self.dropped += max(0, self.pending.qsize() - 1)

    def stats(self) -> dict:
        return {"webhook": {"sent": self.sent, "failed": self.failed, "dropped": self.dropped,
                            "last_error": self.last_error}}


class ProgressSink(Sink):
    """A tqdm bar on stderr: processed frames (of `total` when known), dropped, events."""

    def __init__(self, total: int | None = None):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="frame", desc="watch", file=sys.stderr,
                        dynamic_ncols=True, mininterval=0.5)
        self.events = 0

    def frame(self, p: Processed) -> None:
        self.bar.update(1)

    def event_closed(self, ev: Event) -> None:
        self.events += 1
        self.bar.set_postfix(events=self.events, refresh=False)

    def close(self) -> None:
        self.bar.close()


class _OnePass:
    """Stands in for a classifier's Predictor: `probabilities()` runs the graph once for the
    logits and the embedding and keeps both (`last`), so the frame record the model builds
    and the prediction-log record come from the same run. Everything else is the
    Predictor's own."""

    def __init__(self, predictor):
        self._predictor = predictor
        self.last: tuple | None = None  # (probabilities (N, C), embeddings (N, D))

    def __getattr__(self, name):
        return getattr(self._predictor, name)

    def probabilities(self, images):
        p = self._predictor
        out = p.run(p.preprocess(images), ["logits", "embedding"])
        probs = softmax(out["logits"], p.temperature)
        self.last = (probs, out["embedding"])
        return probs


class PredictionLogSink(Sink):
    """Frames and events into the prediction log (sightwise.monitor), so a camera is
    monitored like the server: with a classification bundle each processed frame is a
    record in the monitor's format (calibrated probabilities, the embedding projected on the
    bundle's reference, its outlier score, the sha256 of the frame's pixels, latency), plus
    `frame` and `stream_t` (seconds from the source's start) and `source`; the live monitor
    tests its windows and an alert writes the labelling queue (sha256s only: frames are not
    kept) and calls `webhook`. A detector bundle's frames are logged with their score and
    verdict (no drift tests: they need a classifier's reference). Closed events are records
    with `"type": "event"`. The log never blocks a frame; drops are counted in `stats()`.
    """

    def __init__(self, mlog, model, source: str | Path):
        self.mlog, self.model, self.source = mlog, model, str(source)
        name, _, digest = model.id.partition("@")
        self.name = name.split("/")[0]
        self.version = f"local-{digest}"  # what `serve` calls a bundle served from a folder
        self.reference = None
        self.one_pass: _OnePass | None = None
        if model.task == "classification":
            self.one_pass = model.predictor = _OnePass(model.predictor)
            self.reference = mlog.reference_for(model.predictor.bundle, self.name)

    def frame(self, p: Processed) -> None:
        from sightwise.monitor.live import record_from_prediction

        sha = sha256_bytes(p.image.tobytes())  # the decoded frame: frames have no file bytes
        extra = {"frame": p.record["frame"], "stream_t": p.record["t"], "source": self.source}
        if self.one_pass is not None and self.one_pass.last is not None:
            probs, emb = self.one_pass.last
            rec = record_from_prediction(model=self.name, version=self.version, probs=probs[0],
                                         embedding=emb[0], reference=self.reference,
                                         sha256=sha, latency_ms=p.record["latency_ms"])
            self.one_pass.last = None
        else:  # a detector: its score, not drift-tested
            rec = {"t": time.time(), "model": self.name, "version": self.version,
                   "sha256": sha, "ms": p.record["latency_ms"],
                   **{k: p.record[k] for k in ("score", "verdict") if k in p.record}}
        self.mlog.log.append({**rec, **extra})

    def event_closed(self, ev: Event) -> None:
        self.mlog.log.append({"t": time.time(), "model": self.name, "version": self.version,
                              **ev.to_record("event"), "source": self.source})

    def flush(self) -> None:
        self.mlog.log.flush(timeout=10.0)

    def close(self) -> None:
        self.mlog.close()

    def stats(self) -> dict:
        st = self.mlog.log.status()
        return {"prediction_log": {"directory": st["directory"], "written": st["written"],
                                   "dropped": st["dropped"],
                                   "alerts": self.mlog.live.alerts if self.mlog.live else 0}}
