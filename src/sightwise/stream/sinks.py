"""Where a watch's results go: one small interface, one class per destination.

The runner calls, in this order and from one thread:
`start(info)` once; then per processed frame `frame(p)`, then `event_opened(ev)` /
`event_closed(ev)` for the events that frame opened or closed; `note(record)` for outages,
gaps and warnings; at the end (also after SIGTERM) `flush()` (finish pending work), then
`note(summary)` with every sink's `stats()` in it, then `close()`.
Every hook defaults to doing nothing, so a sink overrides only what it needs. Sinks run in
the order given; the frames sink goes first so the paths of the images it saves are on the
event when the JSONL sink writes it. A sink reports its own counters through `stats()`.

Adding a destination (e.g. the prediction log) is one subclass: map `frame(p)` and
`event_closed(ev)` onto its API.
"""

from __future__ import annotations

import json
import os
import queue
import re
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from sightwise.core import atomic_write_bytes
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
