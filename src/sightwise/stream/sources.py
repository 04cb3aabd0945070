"""Frame sources: video files, image-sequence folders and live URLs, as sampled RGB frames.

Everything is decoded through PyAV (its wheels bundle FFmpeg), imported lazily so the
package imports where the `video` extra is not installed (folders still work). Times are
seconds from the source's start: a file's presentation timestamps relative to its first
frame; for a live URL, each connection's timestamps anchored at the moment its first frame
arrived, so reconnects, and the gaps between them, stay on one clock.

A live source that drops, ends or stalls (no frame for `timeout` seconds) is reopened with
exponential backoff; the time it was away comes back as a `Gap`. A file that is corrupt or
truncated yields every frame it could read and then raises `SourceCorrupt`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from sightwise.data.decode import decode_image, is_image_path
from sightwise.errors import ImageDecodeError, SightwiseError

# FFmpeg's probing reads up to 5 s of a stream before the first frame by default; a live
# source has nothing to seek back to, so probe a little and start.
LIVE_PROBE = {"probesize": "65536", "analyzeduration": "1000000"}


class SourceError(SightwiseError):
    """The source cannot be opened or read (after retries, for a live one)."""


class SourceDropped(SourceError):
    """A live source ended, failed or stalled; the reader reconnects."""


class SourceCorrupt(SourceError):
    """A file ended early or had undecodable data, after the frames it could read."""


@dataclass
class Frame:
    image: Image.Image  # RGB
    t: float            # seconds from the source's start
    index: int          # decoded-frame number from the start of the watch
    arrival: float      # time.monotonic() when it was decoded


@dataclass
class Gap:
    start: float  # time of the last frame before the drop (0 if none had come)
    end: float    # time of the first frame after the reconnect
    reason: str
    attempts: int

    def to_record(self) -> dict:
        return {"type": "gap", "start": round(self.start, 4), "end": round(self.end, 4),
                "duration": round(self.end - self.start, 4), "reason": self.reason,
                "attempts": self.attempts}


@dataclass
class Disconnect:
    """A live source just dropped (at `t`, the last frame's time); a `Gap` follows when it
    is back, so watchers learn of an outage when it starts, not when it ends."""
    t: float
    reason: str

    def to_record(self) -> dict:
        return {"type": "disconnect", "t": round(self.t, 4), "reason": self.reason}


@dataclass
class SourceStats:
    decoded: int = 0        # frames decoded (or images listed) so far
    sampled: int = 0        # of those, kept by the sampler
    decode_errors: int = 0  # packets or images that could not be decoded
    reconnects: int = 0
    notes: list[dict] = field(default_factory=list)  # warnings (bounded, see `warn`)

    def warn(self, record: dict) -> None:
        if len(self.notes) < 1000:
            self.notes.append(record)


@dataclass(frozen=True)
class SourceOptions:
    timeout: float = 10.0            # open and read timeout of a live source (stall)
    give_up_after: float = 60.0      # live: seconds of failed reconnects before failing (0: never)
    backoff: tuple[float, float] = (0.5, 10.0)  # first and longest wait between reconnects
    source_fps: float | None = None  # folders: frames per second the images stand for
    ffmpeg_options: tuple[tuple[str, str], ...] = ()  # e.g. (("rtsp_transport", "tcp"),)


def is_live(source: str | Path) -> bool:
    """A URL other than file:// is live: it can drop, stall and come back."""
    s = str(source)
    return "://" in s and not s.lower().startswith("file:")


def source_kind(source: str | Path) -> str:
    """'live', 'folder' or 'file'; a path that does not exist is a FileNotFoundError."""
    if is_live(source):
        return "live"
    p = Path(source)
    if p.is_dir():
        return "folder"
    if p.is_file():
        return "file"
    raise FileNotFoundError(f"{source}: no such video file, folder or URL")


def _av():
    try:
        import av
    except ImportError:
        raise SourceError("video files and streams need PyAV: pip install 'sightwise[video]'"
                          ) from None
    return av


def _decode(url: str, stats: SourceStats, *, live: bool, opts: SourceOptions):
    """(PyAV frame, timestamp in seconds) per decoded frame, in presentation order.

    Undecodable packets are counted and skipped. Live: any read error, the end, or no frame
    for `timeout` seconds raises SourceDropped. File: SourceCorrupt at the end when packets
    failed or fewer frames came than the index declares.
    """
    av = _av()
    options = {**(LIVE_PROBE if live else {}), **dict(opts.ffmpeg_options)}
    # A local path goes through FFmpeg's file protocol by name, so a ':' in it is not
    # taken for a protocol ("a:b.mp4").
    target = url if live else "file:" + str(Path(url).resolve())
    try:
        container = av.open(target, options=options, timeout=opts.timeout if live else None)
    except (av.error.FFmpegError, OSError) as exc:
        kind = SourceDropped if live else SourceError
        raise kind(f"{url}: cannot open ({_reason(exc, opts)})") from None
    try:
        if not container.streams.video:
            raise SourceError(f"{url}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threads: decode keeps up with the stream
        step = 1.0 / float(stream.average_rate or 25)
        n0, ts, first_error, last_frame_at = stats.decoded, None, None, time.monotonic()
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.EOFError:
                    break
                except av.error.FFmpegError as exc:
                    stats.decode_errors += 1
                    first_error = first_error or _reason(exc, opts)
                    continue
                for f in frames:
                    ts = f.time if f.time is not None else (0.0 if ts is None else ts + step)
                    stats.decoded += 1
                    last_frame_at = time.monotonic()
                    yield f, ts
                if live and time.monotonic() - last_frame_at > opts.timeout:
                    raise SourceDropped(f"stalled: no frame for {opts.timeout:g} s")
        except (av.error.FFmpegError, OSError) as exc:
            if live:
                raise SourceDropped(f"read failed ({_reason(exc, opts)})") from None
            raise SourceCorrupt(f"{url}: read failed after {stats.decoded - n0} frames "
                                f"({_reason(exc, opts)})") from None
        if live:
            raise SourceDropped("stream ended")
        _check_complete(url, stream, stats.decoded - n0, first_error, stats.decode_errors)
    finally:
        container.close()


def _check_complete(url: str, stream, n: int, first_error: str | None, errors: int) -> None:
    declared = int(stream.frames or 0)
    if declared and n < declared - 1:  # one frame of slack for edit lists
        raise SourceCorrupt(f"{url}: truncated: read {n} of the {declared} frames its index "
                            f"declares" + (f" ({first_error})" if first_error else ""))
    if errors:
        raise SourceCorrupt(f"{url}: corrupt: {errors} undecodable packet(s) skipped, {n} "
                            f"frames read ({first_error})")


def _reason(exc: BaseException, opts: SourceOptions) -> str:
    if type(exc).__name__ == "ExitError":  # FFmpeg's interrupt: PyAV's timeout fired
        return f"no data for {opts.timeout:g} s"
    text = getattr(exc, "strerror", None) or str(exc)
    return text.split(":")[0].strip() if text else type(exc).__name__


def file_frames(path: str | Path, keep: Callable[[float], bool], stats: SourceStats,
                opts: SourceOptions) -> Iterator[Frame]:
    """Kept frames of a video file, times relative to its first frame."""
    first = None
    for f, ts in _decode(str(path), stats, live=False, opts=opts):
        first = ts if first is None else first
        if keep(ts - first):
            yield Frame(f.to_image(), ts - first, stats.decoded - 1, time.monotonic())


def folder_frames(folder: str | Path, keep: Callable[[float], bool], stats: SourceStats,
                  opts: SourceOptions, fps: float) -> Iterator[Frame]:
    """Images of a folder in name order, image i at i / fps seconds. Only kept images are
    decoded; an unreadable one is reported by path and skipped."""
    files = sorted(f for f in Path(folder).iterdir() if f.is_file() and is_image_path(f))
    if not files:
        raise SourceError(f"{folder}: no images in the folder")
    rate = opts.source_fps or fps or 1.0
    for i, f in enumerate(files):
        stats.decoded += 1
        t = i / rate
        if not keep(t):
            continue
        try:
            image = decode_image(f)
        except ImageDecodeError as exc:
            stats.decode_errors += 1
            stats.warn({"type": "warning", "path": str(f), "error": str(exc)})
            continue
        yield Frame(image, t, i, time.monotonic())


class _LiveClock:
    """Each connection's timestamps, anchored where its first frame arrived on the watch's
    clock; a timestamp that jumps back, or runs ahead of the wall clock by more than
    `slack` seconds, re-anchors (streams restart or wrap their clocks)."""

    def __init__(self, origin: float, slack: float = 5.0):
        self.origin, self.slack = origin, slack
        self.anchor: tuple[float, float] | None = None  # (watch time, stream time)
        self.last = -1.0

    def reconnect(self) -> None:
        self.anchor = None

    def time(self, ts: float, arrival: float) -> float:
        wall = arrival - self.origin
        if self.anchor is not None:
            t = self.anchor[0] + ts - self.anchor[1]
            if self.last < t <= wall + self.slack:
                self.last = t
                return t
        self.anchor = (max(wall, self.last + 1e-3), ts)
        self.last = self.anchor[0]
        return self.last


def live_frames(url: str, keep: Callable[[float], bool], stats: SourceStats, opts: SourceOptions,
                stop: threading.Event) -> Iterator[Frame | Gap | Disconnect]:
    """Kept frames of a live URL, reconnecting with backoff: a `Disconnect` marks the start
    of an outage and a `Gap` its end, before the first frame after it. Raises SourceError
    once reconnecting has failed for `give_up_after` seconds (0: retry until stopped)."""
    clock = _LiveClock(time.monotonic())
    delay, attempts, outage, failing_since = opts.backoff[0], 0, None, None
    while not stop.is_set():
        try:
            for f, ts in _decode(url, stats, live=True, opts=opts):
                t = clock.time(ts, time.monotonic())
                if outage is not None:
                    yield Gap(outage[0], t, outage[1], attempts)
                    delay, attempts, outage, failing_since = opts.backoff[0], 0, None, None
                if keep(t):
                    yield Frame(f.to_image(), t, stats.decoded - 1, time.monotonic())
                if stop.is_set():
                    return
        except SourceDropped as exc:
            now = time.monotonic()
            if outage is None:
                outage, failing_since = (max(clock.last, 0.0), str(exc)), now
                yield Disconnect(*outage)
            attempts += 1
            stats.reconnects += 1
            if opts.give_up_after and now - failing_since > opts.give_up_after:
                raise SourceError(f"{url}: gave up after {attempts} attempts in "
                                  f"{now - failing_since:.0f} s ({exc})") from None
            stop.wait(delay)
            delay = min(delay * 2, opts.backoff[1])
        clock.reconnect()


def expected_samples(source: str | Path, fps: float | None, opts: SourceOptions) -> int | None:
    """About how many frames the sampler will keep (for a progress bar); None for a live
    source or when the file does not say how long it is."""
    kind = source_kind(source)
    if kind == "live":
        return None
    if kind == "folder":
        n = sum(1 for f in Path(source).iterdir() if f.is_file() and is_image_path(f))
        rate = opts.source_fps or fps or 1.0
        return n if not fps else min(n, int(n / rate * fps) + 1)
    av = _av()
    try:
        with av.open(str(source)) as c:
            s = c.streams.video[0] if c.streams.video else None
            if s is None:
                return None
            seconds = float(s.duration * s.time_base) if s.duration else (c.duration or 0) / 1e6
            n = int(s.frames) or int(seconds * float(s.average_rate or 0)) or None
    except (av.error.FFmpegError, OSError):
        return None
    if n is None or not fps:
        return n
    return min(n, int(seconds * fps) + 1)
