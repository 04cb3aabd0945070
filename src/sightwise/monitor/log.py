"""The prediction log: a durable local record of every prediction, written off the request path.

Layout of a log folder::

    seg-<start ns>-<pid>-<rand>.jsonl   one record a line: "<crc32 hex8> <compact JSON>\\n"
    images/<sha[:2]>/<sha256>.<ext>     image bytes, only with keep_images (content-addressed)

`append` puts the record on a bounded in-memory queue and returns at once; a background
thread writes each batch with one os.write as soon as it is queued (so a kill -9 loses only
what is still queued, well under a second) and fsyncs at least every `flush_s` seconds (an
OS crash or power cut loses at most that). A full queue, a full disk or an unwritable folder
drop records and count them; nothing ever raises into the caller. A torn or garbled line
(fails its CRC or its JSON) is skipped by the reader, and after a failed write the writer
starts a new segment so no good record is appended to a torn one.

Each writer process writes its own segments; `read_records` merges them in time order.
Retention (age and total size, segments and images) runs in the writer thread once a
minute and at every segment rotation.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import re
import secrets
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger("sightwise.monitor")

SEGMENT_GLOB = "seg-*.jsonl"
DAY = 86400.0
DEFAULT_RETAIN_S = 30 * DAY
DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB of segments and images together
_IMAGE_EXT = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG", ".png"), (b"GIF8", ".gif"),
              (b"BM", ".bmp"), (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))


def encode_line(record: dict) -> bytes:
    """One log line: the CRC32 of the JSON text, a space, the JSON, a newline."""
    body = json.dumps(record, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return b"%08x %s\n" % (zlib.crc32(body), body)


def decode_line(line: bytes) -> dict | None:
    """The record of a complete, intact line, else None (torn, garbled or not an object)."""
    if len(line) < 11 or not line.endswith(b"\n") or line[8:9] != b" ":
        return None
    body = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        rec = json.loads(body)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("t"), (int, float)) else None


def read_segment(path: Path, counts: dict | None = None) -> Iterator[dict]:
    """Intact records of one segment in file order; skipped lines are counted in `counts`."""
    try:
        with open(path, "rb") as f:
            for line in f:
                rec = decode_line(line)
                if rec is None:
                    if counts is not None:
                        counts["corrupt"] = counts.get("corrupt", 0) + 1
                    continue
                yield rec
    except OSError as exc:  # a segment removed by retention while being read, unreadable
        if counts is not None:
            counts["unreadable_segments"] = counts.get("unreadable_segments", 0) + 1
        log.warning("cannot read %s: %s", path, exc)


def read_records(directory: str | Path, *, since: float | None = None,
                 until: float | None = None, counts: dict | None = None) -> Iterator[dict]:
    """Every intact record in the log, in time order across segments (each writer's segment
    is in time order; concurrent writers' segments are merged). `counts` collects skips."""
    segs = sorted(Path(directory).glob(SEGMENT_GLOB))
    merged = heapq.merge(*(read_segment(p, counts) for p in segs), key=lambda r: r["t"])
    for rec in merged:
        if since is not None and rec["t"] < since:
            continue
        if until is not None and rec["t"] >= until:
            continue
        yield rec


def write_all(fd: int, data: bytes) -> None:
    """os.write until done: it may write less than asked (a signal, a nearly full disk)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def image_path(directory: str | Path, sha256: str, data: bytes) -> Path:
    ext = next((e for magic, e in _IMAGE_EXT if data.startswith(magic)), ".bin")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        ext = ".webp"
    elif data[128:132] == b"DICM":  # a kept DICOM upload (de-identified by the server)
        ext = ".dcm"
    return Path(directory) / "images" / sha256[:2] / f"{sha256}{ext}"


def parse_retain(text: str | float | int) -> float:
    """'30d', '12h', '90m', '600s' or seconds -> seconds.

    >>> parse_retain("30d"), parse_retain("1.5h"), parse_retain(60)
    (2592000.0, 5400.0, 60.0)
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text).lower())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"cannot read retention {text!r}; use e.g. 30d, 12h, 90m")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": DAY}[m.group(2)]


def parse_size(text: str | int) -> int:
    """'500MB', '2GB', '1GiB', '800k' or bytes -> bytes (powers of 1024).

    >>> parse_size("2GB"), parse_size("512k"), parse_size(1000)
    (2147483648, 524288, 1000)
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", str(text).lower())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"cannot read size {text!r}; use e.g. 500MB, 2GB")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))


class PredictionLog:
    """Append-only, non-blocking, durable prediction log (see the module docstring).

    `append(record, image=None)` never blocks on I/O and never raises; `status()` gives the
    counters a /metrics endpoint exports. `on_write(records)` (optional) is called from the
    writer thread with each batch once written, e.g. a live drift monitor's `add`.
    """

    def __init__(self, directory: str | Path, *, keep_images: bool = False,
                 retain_s: float = DEFAULT_RETAIN_S, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_queue: int = 10_000, max_queue_bytes: int = 64 << 20,
                 flush_s: float = 1.0, segment_bytes: int = 8 << 20,
                 segment_s: float = 3600.0, maintenance_s: float = 60.0,
                 on_write: Callable[[list[dict]], None] | None = None):
        self.directory = Path(directory)
        self.keep_images = bool(keep_images)
        self.retain_s, self.max_bytes = float(retain_s), int(max_bytes)
        self.max_queue, self.max_queue_bytes = int(max_queue), int(max_queue_bytes)
        self.flush_s, self.maintenance_s = float(flush_s), float(maintenance_s)
        self.segment_bytes, self.segment_s = int(segment_bytes), float(segment_s)
        self.on_write = on_write
        self.counts = {"appended": 0, "written": 0, "dropped_queue_full": 0,
                       "dropped_write_error": 0, "images_written": 0, "removed_segments": 0,
                       "removed_images": 0}
        self.last_error: str | None = None
        self._pending: deque = deque()
        self._pending_bytes = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._synced = threading.Condition(self._lock)
        self._sync_gen = self._sync_want = 0
        self._unsynced_since: float | None = None
        self._fd: int | None = None
        self._seg: Path | None = None
        self._seg_bytes, self._seg_opened = 0, 0.0
        self._closing = False
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # reported through status(); appends are dropped and counted
            self._error(f"cannot create the log folder {self.directory}: {exc}")
        self._thread = threading.Thread(target=self._run, name="sightwise-prediction-log",
                                        daemon=True)
        self._thread.start()

    # -- the caller's side ---------------------------------------------------------------------
    def append(self, record: dict, image: bytes | None = None) -> bool:
        """Queue one record (and its image bytes when keep_images); False when dropped."""
        try:
            size = len(image) if (image is not None and self.keep_images) else 0
            with self._lock:
                if (self._closing or len(self._pending) >= self.max_queue
                        or self._pending_bytes + size > self.max_queue_bytes):
                    self.counts["dropped_queue_full"] += 1
                    return False
                self._pending.append((time.monotonic(), record, image if size else None))
                self._pending_bytes += size
                self.counts["appended"] += 1
            self._wake.set()
            return True
        except Exception:  # noqa: BLE001 - a log must never fail the prediction it records
            return False

    def status(self) -> dict:
        """Counters plus `pending` (queued), `lag_s` (age of the oldest record not yet
        fsynced) and `dropped` (all causes)."""
        with self._lock:
            now = time.monotonic()
            oldest = [t for t in (self._pending[0][0] if self._pending else None,
                                  self._unsynced_since) if t is not None]
            out = dict(self.counts, pending=len(self._pending),
                       lag_s=max(0.0, now - min(oldest)) if oldest else 0.0)
        out["dropped"] = out["dropped_queue_full"] + out["dropped_write_error"]
        out["healthy"] = self.last_error is None
        out["last_error"] = self.last_error
        out["directory"] = str(self.directory)
        return out

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written and fsynced (bounded by timeout)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._sync_want += 1
            want = self._sync_want
            self._wake.set()
            while self._sync_gen < want and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._synced.wait(min(left, 0.1))
                self._wake.set()
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (bounded by timeout), fsync and stop the writer."""
        with self._lock:
            self._closing = True
        self._wake.set()
        self._thread.join(timeout)

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the writer thread ---------------------------------------------------------------------
    def _run(self) -> None:
        last_sync = last_maint = time.monotonic()
        self._maintain()
        while True:
            self._wake.wait(timeout=min(self.flush_s, 0.25))
            self._wake.clear()
            with self._lock:
                batch = list(self._pending)
                self._pending.clear()
                self._pending_bytes = 0
                want, closing = self._sync_want, self._closing
            if batch:
                self._write(batch)
            now = time.monotonic()
            if closing or want > self._sync_gen or now - last_sync >= self.flush_s:
                self._sync()
                last_sync = now
                with self._lock:
                    self._sync_gen = max(self._sync_gen, want)
                    self._synced.notify_all()
            if now - last_maint >= self.maintenance_s:
                self._maintain()
                last_maint = now
            if closing and not self._pending:
                self._close_segment()
                return

    def _write(self, batch: list) -> None:
        records = []
        try:
            lines = []
            for t_append, record, image in batch:
                if image is not None:
                    record = {**record, "img": self._store_image(record, image)}
                lines.append(encode_line(record))
                records.append(record)
                if self._unsynced_since is None:
                    self._unsynced_since = t_append
            data = b"".join(lines)
            write_all(self._segment_fd(len(data)), data)
            self._seg_bytes += len(data)
            self.counts["written"] += len(batch)
            self.last_error = None
        except Exception as exc:  # noqa: BLE001 - full disk, read-only folder, bad record
            self.counts["dropped_write_error"] += len(batch)
            self._error(f"prediction log write failed ({len(batch)} records dropped): {exc}")
            self._close_segment()  # never append after a possibly torn line
            return
        self._notify(records)

    def _notify(self, records: list[dict]) -> None:
        if self.on_write is not None:
            try:
                self.on_write(records)
            except Exception as exc:  # noqa: BLE001 - the monitor must not stop the log
                log.warning("prediction log on_write callback failed: %s", exc)

    def _store_image(self, record: dict, data: bytes) -> str:
        path = image_path(self.directory, str(record.get("sha256", "")) or "unknown", data)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)  # a reader never sees half an image
            self.counts["images_written"] += 1
        else:
            os.utime(path)  # seen again: retention counts from the last sighting
        return path.relative_to(self.directory).as_posix()

    def _segment_fd(self, incoming: int) -> int:
        now = time.time()
        if self._fd is not None and (self._seg_bytes + incoming > self.segment_bytes
                                     or now - self._seg_opened >= self.segment_s):
            self._close_segment()
            self._maintain()
        if self._fd is None:
            name = f"seg-{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(3)}.jsonl"
            self._seg = self.directory / name
            self._fd = os.open(self._seg, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._seg_bytes, self._seg_opened = 0, now
        return self._fd

    def _sync(self) -> None:
        if self._fd is not None and self._unsynced_since is not None:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self._error(f"prediction log fsync failed: {exc}")
                self._close_segment()
        self._unsynced_since = None

    def _close_segment(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError:
                pass
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd, self._seg = None, None

    def _error(self, message: str) -> None:
        if message != self.last_error:
            log.warning(message)
        self.last_error = message

    def _maintain(self) -> None:
        try:
            removed = enforce_retention(self.directory, self.retain_s, self.max_bytes,
                                        keep={self._seg} if self._seg else set())
            self.counts["removed_segments"] += removed["segments"]
            self.counts["removed_images"] += removed["images"]
        except Exception as exc:  # noqa: BLE001 - retention failing must not stop logging
            log.warning("prediction log retention failed: %s", exc)


def enforce_retention(directory: str | Path, retain_s: float, max_bytes: int, *,
                      keep: set = frozenset(), now: float | None = None) -> dict:
    """Remove segments and images last written more than `retain_s` ago, then the oldest
    ones until the folder holds at most `max_bytes`; never a path in `keep`. Returns counts."""
    root = Path(directory)
    now = time.time() if now is None else now
    files = []
    for kind, pattern in (("segments", SEGMENT_GLOB), ("images", "images/*/*")):
        for p in root.glob(pattern):
            try:
                s = p.stat()
            except OSError:
                continue
            files.append((s.st_mtime, s.st_size, kind, p))
    for p in root.glob("images/*/.*.tmp"):  # left by a writer killed mid-image
        _unlink_if_older(p, now - 3600)
    files.sort(key=lambda f: f[0])
    total = sum(f[1] for f in files)
    removed = {"segments": 0, "images": 0}
    for mtime, size, kind, p in files:
        if p in keep:
            continue
        if mtime < now - retain_s or total > max_bytes:
            if _unlink_if_older(p, float("inf")):
                removed[kind] += 1
                total -= size
    return removed


def _unlink_if_older(path: Path, cutoff: float) -> bool:
    try:
        if path.stat().st_mtime < cutoff:
            path.unlink()
            return True
    except OSError:
        pass
    return False
