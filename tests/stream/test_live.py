"""`sightwise watch` in a child process: a live HTTP stream on 127.0.0.1 that drops and
stalls (reconnects survived, gaps recorded), SIGTERM (exit 0, everything flushed) and
kill -9 (every line written still parses)."""

from __future__ import annotations

import signal

import pytest
from sw_stream_media import (
    CLASS_A,
    FPS,
    class_tiles,
    free_port,
    of_type,
    read_jsonl,
    start_server,
    start_watch,
    stop,
    wait_until,
    write_video,
)

av = pytest.importorskip("av")


def after_last(recs: list[dict], kind: str) -> list[dict]:
    """The records after the last one of type `kind` (none when there is none)."""
    idx = [i for i, r in enumerate(recs) if r.get("type") == kind]
    return recs[idx[-1] + 1:] if idx else []


def test_live_stream_drop_stall_reconnect_then_sigterm(classifier, sw_base, tmp_path):
    tiles = class_tiles(sw_base, CLASS_A)
    ts = write_video(tmp_path / "live.ts", (tiles[i % len(tiles)] for i in range(60 * FPS)), FPS,
                     fmt="mpegts")
    rate = ts.stat().st_size / 60.0  # bytes per second: the stream plays in real time
    port, out, log = free_port(), tmp_path / "live.jsonl", tmp_path / "watch.log"
    server = start_server(ts, port, rate)
    watch = start_watch([classifier, f"http://127.0.0.1:{port}/live.ts", "--fps", 5, "--out", out,
                         "--timeout", 2, "--give-up-after", 60, "--threads", 1], log)
    try:
        def opened_after(kind: str):
            return lambda: of_type(after_last(read_jsonl(out), kind), "event_open")

        wait_until(opened_after("start"), 60, "an event from the stream", watch)
        stop(server)  # 1. the server dies: the connection drops, reconnects are refused
        wait_until(lambda: of_type(read_jsonl(out), "disconnect"), 20, "the drop noticed", watch)
        server = start_server(ts, port, rate)
        wait_until(opened_after("gap"), 60, "an event after the reconnect", watch)

        server.send_signal(signal.SIGSTOP)  # 2. the server hangs: the stream stalls
        wait_until(lambda: len(of_type(read_jsonl(out), "disconnect")) == 2, 30,
                   "the stall noticed", watch)
        server.send_signal(signal.SIGCONT)
        wait_until(lambda: len(of_type(read_jsonl(out), "gap")) == 2 and opened_after("gap")(),
                   60, "an event after the second reconnect", watch)
        assert stop(watch, signal.SIGTERM, timeout=30) == 0, log.read_text()[-2000:]
    finally:
        stop(watch)
        stop(server)

    recs = read_jsonl(out)
    drop, stall = of_type(recs, "disconnect")
    assert "stalled" in stall["reason"] or "no data" in stall["reason"], stall
    gaps = of_type(recs, "gap")
    assert [g["start"] for g in gaps] == [drop["t"], stall["t"]]
    for g in gaps:  # each gap spans the outage: at least the timeout/backoff, on one clock
        assert g["end"] > g["start"] + 0.4 and g["attempts"] >= 1
    times = [r["t"] for r in of_type(recs, "frame")]
    assert times == sorted(times)
    events = of_type(recs, "event")
    assert [e["closed_by"] for e in events] == ["gap", "gap", "stop"]
    assert all(e["label"] == CLASS_A for e in events)
    summary = recs[-1]
    assert summary["type"] == "summary" and summary["ended_by"] == "stop" and summary["gaps"] == 2


def test_kill_9_leaves_whole_lines_and_a_playable_video(classifier, class_video, tmp_path):
    out, review = tmp_path / "k.jsonl", tmp_path / "review.mp4"
    watch = start_watch([classifier, class_video, "--fps", 10, "--realtime", "--out", out,
                         "--video-out", review, "--threads", 1], tmp_path / "watch.log")
    try:
        wait_until(lambda: len(of_type(read_jsonl(out), "frame")) >= 40, 60, "40 frames", watch)
    finally:
        assert stop(watch, signal.SIGKILL) == -signal.SIGKILL
    text = out.read_text()
    assert text.endswith("\n")
    recs = read_jsonl(out)  # every line parses
    assert recs[0]["type"] == "start" and not of_type(recs, "summary")
    assert [r["frame"] for r in of_type(recs, "frame")][:40] == list(range(40))
    with av.open(str(review)) as c:  # fragmented MP4: the fragments written before the kill play
        assert sum(1 for _ in c.decode(video=0)) >= 25


def test_sigterm_on_a_file_exits_0_with_everything_flushed(classifier, class_video, tmp_path):
    out = tmp_path / "t.jsonl"
    watch = start_watch([classifier, class_video, "--fps", 5, "--realtime", "--out", out,
                         "--threads", 1], tmp_path / "watch.log")
    try:
        wait_until(lambda: of_type(read_jsonl(out), "event_open"), 60, "an open event", watch)
        assert stop(watch, signal.SIGTERM, timeout=30) == 0
    finally:
        stop(watch)
    recs = read_jsonl(out)
    (ev,) = of_type(recs, "event")
    assert ev["label"] == CLASS_A and ev["closed_by"] == "stop"
    summary = recs[-1]
    assert summary["type"] == "summary" and summary["ended_by"] == "stop"
    assert summary["frames_processed"] == len(of_type(recs, "frame")) < 75
