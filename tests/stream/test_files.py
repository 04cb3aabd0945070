"""`sightwise watch` on video files and image folders of known content: events against the
known intervals, peak images, the annotated video, corrupt input, the webhook."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from sw_stream_media import CLASS_A, CLASS_B, FPS, class_tiles, free_port, of_type, read_jsonl, write_video
from typer.testing import CliRunner

from sightwise.cli import app
from sightwise.data.decode import decode_image

av = pytest.importorskip("av")

STEP = 0.2  # --fps 5


def watch(*args) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["watch", *map(str, args), "--quiet", "--threads", "1"])
    return res.exit_code, res.stderr


def check_contract(records: list[dict]) -> None:
    for r in of_type(records, "event"):
        assert isinstance(r["label"], str) and isinstance(r["peak_score"], float)
        assert 0 <= r["start"] <= r["end"]


def test_classes_video_gives_one_event_per_class(classifier, class_video, tmp_path):
    out, frames = tmp_path / "events.jsonl", tmp_path / "frames"
    code, err = watch(classifier, class_video, "--fps", 5, "--out", out, "--frames-out", frames,
                      "--video-out", tmp_path / "review.mp4")
    assert code == 0, err
    recs = read_jsonl(out)
    check_contract(recs)
    events = of_type(recs, "event")
    assert [e["label"] for e in events] == [CLASS_A, CLASS_B], events
    a, b = events
    # Truth: A on [0, 10), B on [10, 15); sampled frames at 0, 0.2, ... 14.8.
    assert a["start"] == pytest.approx(0.0, abs=STEP) and a["end"] == pytest.approx(10.0, abs=STEP + 1e-6)
    assert b["start"] == pytest.approx(10.0, abs=STEP) and b["end"] == pytest.approx(15.0, abs=STEP + 1e-6)
    assert (a["closed_by"], b["closed_by"]) == ("clear", "end")
    summary = of_type(recs, "summary")[-1]
    assert summary["frames_processed"] == len(of_type(recs, "frame")) == 75
    assert summary["frames_dropped"] == 0 and summary["frames_decoded"] == 150
    for e in events:  # the peak frame and its heat map, saved and readable
        peak, heat = decode_image(e["peak_image"]), decode_image(e["heat_image"])
        assert peak.size == heat.size == (64, 64)
        assert np.abs(np.asarray(peak, float) - np.asarray(heat, float)).mean() > 5
        assert Path(e["peak_image"]).parent == frames
    with av.open(str(tmp_path / "review.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 75


def test_defect_video_gives_one_anomaly_event(detector, defect_video, tmp_path):
    out = tmp_path / "events.jsonl"
    code, err = watch(detector, defect_video, "--fps", 5, "--out", out, "--frames-out", tmp_path / "f")
    assert code == 0, err
    recs = read_jsonl(out)
    check_contract(recs)
    (ev,) = of_type(recs, "event")
    # Truth: the blob is in frames 100-149, i.e. [10.0, 15.0).
    assert ev["label"] == "anomaly"
    assert ev["start"] == pytest.approx(10.0, abs=STEP) and ev["end"] == pytest.approx(15.0, abs=STEP + 1e-6)
    frames = of_type(recs, "frame")
    peak = next(f for f in frames if f["frame"] == ev["peak_frame"])
    assert ev["peak_score"] == pytest.approx(peak["score"]) == max(f["score"] for f in frames)
    assert Path(ev["heat_image"]).is_file()


def test_folder_source_reports_a_corrupt_image_and_goes_on(classifier, sw_base, tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    tiles = class_tiles(sw_base, CLASS_A)[:6] + class_tiles(sw_base, CLASS_B)[:6]
    for i, tile in enumerate(tiles):
        tile.save(folder / f"f{i:03d}.png")
    (folder / "f003.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "events.jsonl"
    code, err = watch(classifier, folder, "--fps", 2, "--k", 2, "--n", 3, "--m", 2, "--out", out)
    assert code == 0, err
    recs = read_jsonl(out)
    (warning,) = of_type(recs, "warning")
    assert warning["path"].endswith("f003.png")
    frames = of_type(recs, "frame")
    assert [f["frame"] for f in frames] == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11]
    assert [f["t"] for f in frames][:4] == [0.0, 0.5, 1.0, 2.0]
    assert [e["label"] for e in of_type(recs, "event")] == [CLASS_A, CLASS_B]


def _noise_video(path: Path, n: int = 60, faststart: bool = False) -> Path:
    rng = np.random.default_rng(0)
    return write_video(path, (rng.integers(0, 255, (48, 48, 3), dtype=np.uint8) for _ in range(n)),
                       FPS, faststart=faststart)


def test_truncated_file_errors_after_the_frames_it_read(classifier, tmp_path):
    whole = _noise_video(tmp_path / "whole.mp4", faststart=True)  # index first, then data
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    out = tmp_path / "events.jsonl"
    code, err = watch(classifier, cut, "--fps", 0, "--out", out)
    assert code == 2
    assert "truncated" in err and "of the 60 frames" in err
    recs = read_jsonl(out)
    n = len(of_type(recs, "frame"))
    assert 5 < n < 60
    assert "truncated" in of_type(recs, "error")[0]["message"]
    assert of_type(recs, "summary")[0]["frames_processed"] == n


def test_corrupt_middle_and_unreadable_files(classifier, tmp_path):
    data = bytearray(_noise_video(tmp_path / "v.mp4").read_bytes())
    mid = len(data) // 2
    data[mid:mid + 3000] = np.random.default_rng(1).integers(0, 255, 3000, dtype=np.uint8).tobytes()
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(bytes(data))
    code, err = watch(classifier, bad, "--fps", 0, "--out", tmp_path / "c.jsonl")
    assert code == 2 and "undecodable" in err
    assert len(of_type(read_jsonl(tmp_path / "c.jsonl"), "frame")) > 30

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    code, err = watch(classifier, junk, "--out", tmp_path / "j.jsonl")
    assert code == 2 and "cannot open" in err
    code, err = watch(classifier, tmp_path / "missing.mp4")
    assert code == 2 and "no such video file" in err


class _Collector(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_gets_events_and_a_dead_one_is_not_fatal(classifier, class_video, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        out = tmp_path / "a.jsonl"
        code, err = watch(classifier, class_video, "--out", out, "--events-only",
                          "--alert-webhook", url)
        assert code == 0, err
    finally:
        server.shutdown()
        server.server_close()
    got = [(r["type"], r["label"]) for r in _Collector.received]
    assert got == [("event_open", CLASS_A), ("event", CLASS_A), ("event_open", CLASS_B),
                   ("event", CLASS_B)]
    recs = read_jsonl(out)
    assert of_type(recs, "frame") == [] and len(of_type(recs, "event")) == 2
    assert of_type(recs, "summary")[0]["webhook"]["sent"] == 4

    out = tmp_path / "b.jsonl"  # nothing listens on this port
    code, err = watch(classifier, class_video, "--out", out, "--alert-webhook",
                      f"http://127.0.0.1:{free_port()}/hook", "--webhook-timeout", 0.5)
    assert code == 0, err
    hook = of_type(read_jsonl(out), "summary")[0]["webhook"]
    assert hook["sent"] == 0 and hook["failed"] + hook["dropped"] == 4
