"""Media the stream tests make for themselves (importable as `sw_stream_media`): videos
encoded with PyAV from generated images of known content, and small process helpers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

SRC = Path(__file__).resolve().parents[2] / "src"

FPS = 10             # source frame rate of the generated videos
CLASS_A, CLASS_B = "brick", "moon"  # 10 s of A, then 5 s of B
DEFECT_FRAMES = range(100, 150)     # the detector video's planted defect (of 200 frames)


def class_tiles(sw_base: Path, name: str) -> list[Image.Image]:
    """The class's tiles of the exported bundle's training data, as 64 px frames."""
    files = sorted((sw_base / "data" / name).glob("*.png"))
    return [Image.open(f).convert("RGB").resize((64, 64), Image.Resampling.BILINEAR) for f in files]


def write_video(path: Path, frames: Iterable[np.ndarray | Image.Image], fps: int = 10,
                fmt: str | None = None, faststart: bool = False) -> Path:
    """H.264 (near lossless, no B-frames so timestamps start at 0) in MP4 or `fmt`."""
    import av

    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format=fmt, options=options) as c:
        s = None
        for img in frames:
            img = img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img, np.uint8))
            if s is None:
                s = c.add_stream("libx264", rate=fps)
                s.width, s.height, s.pix_fmt = img.width, img.height, "yuv420p"
                s.options = {"crf": "4", "bf": "0", "g": str(fps)}
            for p in s.encode(av.VideoFrame.from_image(img.convert("RGB"))):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def read_jsonl(path: Path) -> list[dict]:
    """Every line of a JSONL file, parsed (a line that does not parse fails the test)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def of_type(records: Sequence[dict], kind: str) -> list[dict]:
    return [r for r in records if r.get("type") == kind]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def start_watch(args: Sequence[str], log: Path) -> subprocess.Popen:
    """`sightwise watch ARGS` in a child process (stderr into `log`)."""
    cmd = [sys.executable, "-c", "from sightwise.cli import app; app()", "watch", *map(str, args),
           "--quiet"]
    return subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=open(log, "wb"))


def start_server(ts_file: Path, port: int, rate: float) -> subprocess.Popen:
    """The MPEG-TS HTTP server of _ts_server.py on 127.0.0.1:port, started and waited for."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("_ts_server.py")),
                             str(ts_file), str(port), str(rate)], env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = proc.stdout.readline()  # "ready" once it listens
    assert line.strip() == b"ready", "stream server did not start"
    return proc


def wait_until(cond: Callable[[], bool], timeout: float, what: str,
               proc: subprocess.Popen | None = None) -> None:
    """Poll `cond` every 0.1 s; fail naming `what` after `timeout` s (or if `proc` exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"watch exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 15.0) -> int:
    """Signal our own child and reap it."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)
