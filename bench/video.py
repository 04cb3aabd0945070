"""Claim: `sightwise watch` costs little beyond the model itself, and when asked for more
frames than the machine can process it drops (and counts) frames instead of falling behind.

    python bench/video.py CLASSIFIER DETECTOR [--seconds 20] [--threads 1]

CLASSIFIER is an exported classification bundle (224 px), DETECTOR a detector bundle
(`sightwise inspect fit`). For each, a 25 fps 224 x 224 H.264 video is made from the shared
datasets (NEU surface defects for the classifier, magnetic-tile images for the detector)
and measured, in one process:

- reference: the model alone (`run(image)`, batch 1) on the video's frames decoded
  beforehand: the most frames per second a one-at-a-time pipeline around it could reach
  (timed before and after the watch run, averaged);
- `watch` on the file as fast as it goes (every frame): decode, sampling, model, records,
  JSONL; processed frames per second and its ratio to the reference;
- `watch --realtime` (the file played at 25 fps, as a camera delivers it), asking for every
  frame (25 fps) and for 5 fps: processed fps, dropped-frame share, and the latency from a
  frame's arrival to its record, p50 / p95.

The last line is `ratio=<watch / model-alone frames per second, classifier>`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from sightwise.stream.models import load_model
from sightwise.stream.runner import WatchConfig, watch
from sightwise.stream.sinks import JsonlSink

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SOURCE_FPS = 25


def make_video(path: Path, images: list[Path], seconds: int) -> Path:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=SOURCE_FPS)
        s.width = s.height = 224
        s.pix_fmt, s.options = "yuv420p", {"crf": "18"}
        for i in range(seconds * SOURCE_FPS):
            img = Image.open(images[(i // 5) % len(images)]).convert("RGB").resize((224, 224))
            for p in s.encode(av.VideoFrame.from_image(img)):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def decoded_frames(path: Path) -> list[Image.Image]:
    import av

    with av.open(str(path)) as c:
        return [f.to_image() for f in c.decode(video=0)]


def model_alone(model, frames: list[Image.Image]) -> float:
    model.run(frames[0])  # warm-up: first-run allocations
    t0 = time.perf_counter()
    for f in frames:
        model.run(f)
    return len(frames) / (time.perf_counter() - t0)


def run_watch(model, video: Path, out: Path, **cfg) -> dict:
    sink = JsonlSink(out, frames=True)
    return watch(model, video, [sink], WatchConfig(**cfg))


def measure(name: str, bundle: Path, images: list[Path], args, tmp: Path) -> float:
    model = load_model(bundle, threads=args.threads)
    video = make_video(tmp / f"{name}.mp4", images, args.seconds)
    frames = decoded_frames(video)
    # The reference is timed before and after watch and averaged: on a shared machine the
    # load changes during the run.
    before = model_alone(model, frames)
    full = run_watch(model, video, tmp / f"{name}_full.jsonl", fps=None)
    bare = (before + model_alone(model, frames)) / 2
    del frames
    print(f"\n{name} ({model.id}), {args.seconds} s of 224 px video at {SOURCE_FPS} fps, "
          f"{args.threads} onnxruntime thread(s)")
    print(f"  model alone, batch 1:               {bare:7.1f} frames/s")
    print(f"  watch, file as fast as it goes:     {full['processed_fps']:7.1f} frames/s "
          f"({full['processed_fps'] / bare:.2f}x the model alone)")
    for fps in (SOURCE_FPS, 5):
        s = run_watch(model, video, tmp / f"{name}_rt{fps}.jsonl", fps=fps, realtime=True)
        lat = s["latency_ms"] or {}
        print(f"  watch --realtime, asked {fps:2d} fps:     {s['processed_fps']:7.1f} frames/s, "
              f"dropped {100 * s['drop_share']:5.1f} % of {s['frames_sampled']}, latency p50 "
              f"{lat.get('p50', float('nan')):.0f} ms p95 {lat.get('p95', float('nan')):.0f} ms")
    return full["processed_fps"] / bare


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("classifier", type=Path)
    ap.add_argument("detector", type=Path)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1,
                    help="onnxruntime threads (1 keeps a shared machine usable)")
    args = ap.parse_args()
    neu = sorted((DATA / "neu_det" / "images").glob("*/*.jpg"))[::7]
    tiles = sorted((DATA / "magnetic_tile" / "images" / "Free").glob("*.jpg"))[::5]
    with tempfile.TemporaryDirectory() as d:
        ratio = measure("classifier", args.classifier, neu, args, Path(d))
        measure("detector", args.detector, tiles, args, Path(d))
    print(f"cores={os.cpu_count()} load average={os.getloadavg()[0]:.2f}")
    print(f"ratio={ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
