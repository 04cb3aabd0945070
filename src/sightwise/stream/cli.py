"""Command-line entry points of sightwise.stream, added to the main `sightwise` app by
`register(app)`. Imports only typer at module level; heavy imports happen inside commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from sightwise.cli_errors import user_errors

A = Annotated
Opt = typer.Option


def _ffmpeg_options(items: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--ffmpeg-option takes KEY=VALUE, got {item!r}")
        out.append((key, value))
    return tuple(out)


@user_errors
def watch(
    bundle: A[Path, typer.Argument(help="Classification bundle (exported) or detector bundle.")],
    source: A[str, typer.Argument(help="Video file, folder of images, or a URL FFmpeg opens "
                                  "(rtsp://, http://, udp://).")],
    fps: A[float, Opt("--fps", help="Frames per second to process (0: every frame).")] = 5.0,
    out: A[Path | None, Opt("--out", help="JSONL of frame records, events, gaps and the "
                            "summary (appended). Default: events to stdout.")] = None,
    frames_out: A[Path | None, Opt("--frames-out", help="Folder for each event's peak frame "
                                   "and its heat map.")] = None,
    video_out: A[Path | None, Opt("--video-out", help="Annotated MP4 of the processed "
                                  "frames.")] = None,
    alert_webhook: A[str | None, Opt("--alert-webhook", help="POST each event (opened and "
                                     "closed) as JSON to this URL.")] = None,
    webhook_timeout: A[float, Opt("--webhook-timeout", help="Seconds per webhook request.")] = 2.0,
    k: A[int, Opt("--k", help="An event opens when its label is in K ...")] = 3,
    n: A[int, Opt("--n", help="... of the last N processed frames ...")] = 5,
    m: A[int, Opt("--m", help="... and closes after M processed frames without it.")] = 3,
    min_score: A[float, Opt("--min-score", help="Classifier: the top class counts when its "
                            "probability reaches this.")] = 0.5,
    labels: A[str | None, Opt("--labels", help="Classifier: comma-separated classes that "
                              "make events (default: all).")] = None,
    threshold: A[float | None, Opt("--threshold", help="Detector: anomaly score threshold "
                                   "(default: the bundle's).")] = None,
    top_k: A[int, Opt("--top-k", help="Classes per frame record.")] = 3,
    int8: A[bool, Opt("--int8", help="Run model.int8.onnx.")] = False,
    threads: A[int | None, Opt("--threads", help="onnxruntime threads (default: all cores).")] = None,
    realtime: A[bool, Opt("--realtime", help="Play a file or folder at its own speed, as a "
                          "camera would (frames the model cannot keep up with are dropped).")] = False,
    queue: A[int, Opt("--queue", help="Frames that may wait for the model.")] = 2,
    timeout: A[float, Opt("--timeout", help="Live: seconds without data before the source "
                          "counts as stalled and is reopened.")] = 10.0,
    give_up_after: A[float, Opt("--give-up-after", help="Live: seconds of failed reconnects "
                                "before giving up (0: never).")] = 60.0,
    source_fps: A[float | None, Opt("--source-fps", help="Folder: frames per second the "
                                    "images stand for (default: --fps).")] = None,
    ffmpeg_option: A[list[str] | None, Opt("--ffmpeg-option", help="KEY=VALUE passed to "
                                           "FFmpeg, e.g. rtsp_transport=tcp (repeatable).")] = None,
    frame_records: A[bool, Opt("--frame-records/--events-only", help="Write a record per "
                               "processed frame to --out.")] = True,
    log: A[Path | None, Opt("--log", help="Prediction log folder: every processed frame and "
                            "event is recorded and, for a classifier, tested for drift like "
                            "`serve --log` (alerts to <log>/labelling-queue and "
                            "--alert-webhook).")] = None,
    monitor_window: A[int, Opt("--monitor-window", help="Frames per drift-test window "
                               "(with --log).")] = 100,
    quiet: A[bool, Opt("--quiet", help="No progress bar.")] = False,
):
    """Classify or inspect the frames of a video, folder or stream; debounce into events."""
    from sightwise.stream.runner import WatchConfig, run_watch
    from sightwise.stream.sources import SourceOptions

    cfg = WatchConfig(fps=fps or None, k=k, n=n, m=m, queue=queue, realtime=realtime,
                      source=SourceOptions(timeout=timeout, give_up_after=give_up_after,
                                           source_fps=source_fps,
                                           ffmpeg_options=_ffmpeg_options(ffmpeg_option or [])))
    summary = run_watch(
        bundle, source, cfg, out=out, frames_out=frames_out, video_out=video_out,
        webhook=alert_webhook, webhook_timeout=webhook_timeout, frame_records=frame_records,
        progress=not quiet, log_dir=log, monitor_window=monitor_window,
        model_options={"min_score": min_score, "threshold": threshold, "top_k": top_k,
                       "int8": int8, "threads": threads,
                       "labels": [s.strip() for s in labels.split(",") if s.strip()] if labels else None})
    keys = ("frames_processed", "frames_dropped", "drop_share", "events", "gaps", "processed_fps",
            "latency_ms", "ended_by")
    typer.echo(json.dumps({k: summary.get(k) for k in keys}), err=True)
    if summary["error"]:
        typer.echo(f"error: {summary['error']}", err=True)
        raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    """Add this package's commands to the main app."""
    app.command("watch")(watch)
