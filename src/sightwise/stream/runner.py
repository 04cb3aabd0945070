"""`watch(model, source, sinks, cfg)`: decode, sample, run the model, debounce, dispatch.

Two threads. The reader decodes the source (reconnecting a live one), keeps the sampled
frames and hands them over through a `FrameSlot` of `cfg.queue` places; the caller's
thread runs the model on each, builds the frame record, feeds the debouncer and gives
everything to the sinks in order. When the model falls behind a live (or `realtime`)
source, frames are dropped at the slot and counted; a file is read no faster than the
model goes, so nothing of it is dropped. Setting `stop` (the CLI does on SIGTERM/SIGINT)
ends the loop at the next frame: open events are closed, the summary is written and every
sink is closed.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from sightwise.stream.events import Debouncer, Event, Observation
from sightwise.stream.sampler import FrameSlot, Sampler
from sightwise.stream.sinks import Processed, Sink
from sightwise.stream.sources import (
    Disconnect,
    Frame,
    Gap,
    SourceError,
    SourceOptions,
    SourceStats,
    file_frames,
    folder_frames,
    live_frames,
    source_kind,
)


@dataclass(frozen=True)
class WatchConfig:
    fps: float | None = 5.0     # frames per second to process (None or 0: every frame)
    k: int = 3                  # an event opens when its label is in K ...
    n: int = 5                  # ... of the last N processed frames
    m: int = 3                  # and closes after M processed frames without it
    queue: int = 2              # frames that may wait for the model
    realtime: bool = False      # pace a file or folder at its own speed, as a camera would
    source: SourceOptions = field(default_factory=SourceOptions)


@dataclass
class _End:
    error: BaseException | None


@dataclass
class _Counters:
    sampled: int = 0
    dropped: int = 0
    processed: int = 0
    events: int = 0
    gaps: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=10_000))


def open_frames(source: str | Path, cfg: WatchConfig, stats: SourceStats,
                stop: threading.Event) -> Iterator[Frame | Gap | Disconnect]:
    """The sampled frames (and, live, the outages) of `source`."""
    keep = Sampler(cfg.fps).keep
    kind = source_kind(source)
    if kind == "live":
        return live_frames(str(source), keep, stats, cfg.source, stop)
    if kind == "folder":
        return folder_frames(source, keep, stats, cfg.source, cfg.fps or 0.0)
    return file_frames(source, keep, stats, cfg.source)


def _read(frames: Iterator[Frame | Gap | Disconnect], slot: FrameSlot, stop: threading.Event,
          drop: bool, realtime: bool, counts: _Counters) -> None:
    """The reader thread: everything it produces, then an _End, goes through `slot`."""
    origin = None
    try:
        for item in frames:
            if stop.is_set():
                break
            if isinstance(item, Frame):
                if realtime:  # the frame "arrives" when its time comes, as from a camera
                    origin = time.monotonic() - item.t if origin is None else origin
                    stop.wait(max(0.0, origin + item.t - time.monotonic()))
                    item.arrival = time.monotonic()
                counts.sampled += 1
                counts.dropped += slot.put(item, drop=drop, stop=stop)
            else:
                slot.put(item, drop=drop, stop=stop)
        slot.put(_End(None), drop=drop)
    except BaseException as exc:  # noqa: BLE001 - handed to the main thread, raised there
        slot.put(_End(exc), drop=drop)


def _emit_events(sinks: Sequence[Sink], opened: list[Event], closed: list[Event]) -> None:
    """Closings first: when one label gives way to another, the old event ends first."""
    for ev in closed:
        for s in sinks:
            s.event_closed(ev)
    for ev in opened:
        for s in sinks:
            s.event_opened(ev)


def _process(model, frame: Frame, deb: Debouncer, sinks: Sequence[Sink], counts: _Counters) -> None:
    result = model.run(frame.image)
    opened, closed = deb.update(Observation(frame.t, frame.index, result.hits,
                                            (frame.image, result)))
    latency = (time.monotonic() - frame.arrival) * 1000.0
    record = {"type": "frame", "t": round(frame.t, 4), "frame": frame.index, "model": model.id,
              **result.fields, "latency_ms": round(latency, 2)}
    counts.processed += 1
    counts.events += len(closed)
    counts.latencies.append(latency)
    p = Processed(record, frame.image, result, tuple(sorted(deb.open)))
    for s in sinks:
        s.frame(p)
    _emit_events(sinks, opened, closed)


def watch(model, source: str | Path, sinks: Sequence[Sink], cfg: WatchConfig | None = None,
          stop: threading.Event | None = None) -> dict:
    """Run until the source ends, fails or `stop` is set; returns the summary record (also
    given to every sink). A source error (corrupt file, unreachable stream) ends the watch
    after the frames that could be read and is in the summary's "error"."""
    cfg = cfg or WatchConfig()
    stop = stop or threading.Event()
    kind = source_kind(source)
    stats, counts, slot = SourceStats(), _Counters(), FrameSlot(cfg.queue)
    deb = Debouncer(cfg.k, cfg.n, cfg.m)
    frames = open_frames(source, cfg, stats, stop)
    reader = threading.Thread(target=_read, name="reader", daemon=True,
                              args=(frames, slot, stop, kind == "live" or cfg.realtime,
                                    cfg.realtime, counts))
    info = {"source": str(source), "kind": kind, **model.describe(), "fps": cfg.fps,
            "k": cfg.k, "n": cfg.n, "m": cfg.m, "realtime": cfg.realtime,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for s in sinks:
        s.start(info)
    t0, ended_by, error, notes_seen = time.monotonic(), "end", None, 0
    reader.start()
    try:
        while True:
            item = slot.get(0.2)
            for note in stats.notes[notes_seen:]:  # warnings of the reader, in order
                for s in sinks:
                    s.note(note)
            notes_seen = len(stats.notes)
            if stop.is_set():
                ended_by = "stop"
                break
            if item is None:
                continue
            if isinstance(item, _End):
                if item.error is not None and not isinstance(item.error, SourceError):
                    raise item.error
                error, ended_by = item.error, ("error" if item.error else "end")
                break
            if isinstance(item, (Disconnect, Gap)):
                _outage(item, deb, sinks, counts)
                continue
            _process(model, item, deb, sinks, counts)
    except BaseException as exc:
        ended_by, error = "error", exc
        raise
    finally:
        stop.set()
        summary = _finish(sinks, deb, stats, counts, time.monotonic() - t0, ended_by, error)
        reader.join(timeout=1.0)  # a read blocked in FFmpeg ends at its timeout; not waited on
    return summary


def _outage(item: Disconnect | Gap, deb: Debouncer, sinks: Sequence[Sink], counts: _Counters) -> None:
    if isinstance(item, Disconnect):  # nothing can be said to hold while the source is away
        closed = deb.close_all("gap")
        counts.events += len(closed)
        _emit_events(sinks, [], closed)
    counts.gaps += isinstance(item, Gap)
    for s in sinks:
        s.note(item.to_record())


def _finish(sinks: Sequence[Sink], deb: Debouncer, stats: SourceStats, counts: _Counters,
            elapsed: float, ended_by: str, error: BaseException | None) -> dict:
    """Close open events, flush, write the error and the summary, close every sink."""
    last = deb.close_all("stop" if ended_by == "stop" else "end")
    counts.events += len(last)
    _emit_events(sinks, [], last)
    for s in sinks:
        s.flush()
    summary = _summary(stats, counts, elapsed, ended_by, error, sinks)
    for s in sinks:
        if error is not None:
            s.note({"type": "error", "message": str(error)})
        s.note(summary)
    for s in sinks:
        s.close()
    return summary


def _summary(stats: SourceStats, counts: _Counters, elapsed: float, ended_by: str,
             error: BaseException | None, sinks: Sequence[Sink]) -> dict:
    lat = np.asarray(counts.latencies, np.float64)
    out = {"type": "summary", "ended_by": ended_by, "error": str(error) if error else None,
           "frames_decoded": stats.decoded, "frames_sampled": counts.sampled,
           "frames_processed": counts.processed, "frames_dropped": counts.dropped,
           "drop_share": round(counts.dropped / counts.sampled, 4) if counts.sampled else 0.0,
           "decode_errors": stats.decode_errors, "events": counts.events, "gaps": counts.gaps,
           "reconnect_attempts": stats.reconnects, "elapsed_s": round(elapsed, 3),
           "processed_fps": round(counts.processed / elapsed, 3) if elapsed > 0 else 0.0,
           "latency_ms": ({"p50": round(float(np.percentile(lat, 50)), 2),
                           "p95": round(float(np.percentile(lat, 95)), 2)} if lat.size else None)}
    for s in sinks:
        out.update(s.stats())
    return out


def build_sinks(model, *, out: Path | None, frames_out: Path | None, video_out: Path | None,
                webhook: str | None, webhook_timeout: float, frame_records: bool,
                fps: float | None, progress_total: int | None | bool,
                log_dir: Path | None = None, source: str | Path = "",
                monitor_window: int = 100) -> list[Sink]:
    """The sinks a `watch` command asks for, in dispatch order (frames first: the saved
    images' paths go on the events the JSONL then writes). `log_dir`: the prediction log
    (and its live drift monitor, whose alerts go to `webhook` too)."""
    from sightwise.stream.sinks import FramesSink, JsonlSink, ProgressSink, WebhookSink

    sinks: list[Sink] = []
    if frames_out is not None:
        sinks.append(FramesSink(frames_out, model))
    sinks.append(JsonlSink(out, frames=frame_records and out is not None))
    if log_dir is not None:
        from sightwise.monitor.live import MonitorLog
        from sightwise.monitor.windows import MonitorConfig
        from sightwise.stream.sinks import PredictionLogSink

        config = MonitorConfig(window=monitor_window, min_n=min(20, monitor_window))
        sinks.append(PredictionLogSink(MonitorLog(log_dir, config=config, webhook=webhook),
                                       model, source))
    if video_out is not None:
        from sightwise.stream.annotate import VideoSink

        sinks.append(VideoSink(video_out, model, fps or 25.0))
    if webhook:
        sinks.append(WebhookSink(webhook, timeout=webhook_timeout))
    if progress_total is not False:
        sinks.append(ProgressSink(progress_total or None))
    return sinks


def run_watch(bundle: str | Path, source: str | Path, cfg: WatchConfig, *,
              out: Path | None = None, frames_out: Path | None = None,
              video_out: Path | None = None, webhook: str | None = None,
              webhook_timeout: float = 2.0, frame_records: bool = True, progress: bool = True,
              model_options: dict | None = None, log_dir: Path | None = None,
              monitor_window: int = 100) -> dict:
    """What `sightwise watch` does: load the bundle, build the sinks, watch until the source
    ends or SIGTERM/SIGINT arrives (then flush and return normally)."""
    import signal

    from sightwise.stream.models import load_model
    from sightwise.stream.sources import expected_samples

    source_kind(source)  # a missing path fails here, before the model loads
    model = load_model(bundle, **(model_options or {}))
    total = expected_samples(source, cfg.fps, cfg.source) if progress else False
    sinks = build_sinks(model, out=out, frames_out=frames_out, video_out=video_out,
                        webhook=webhook, webhook_timeout=webhook_timeout,
                        frame_records=frame_records, fps=cfg.fps, progress_total=total,
                        log_dir=log_dir, source=source, monitor_window=monitor_window)
    stop = threading.Event()
    main = threading.current_thread() is threading.main_thread()
    previous = {}
    if main:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        return watch(model, source, sinks, cfg, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
