"""Source kinds and the live clock, worked by hand."""

from __future__ import annotations

import pytest

from sightwise.stream.sources import _LiveClock, is_live, source_kind


def test_source_kinds(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"x")
    assert source_kind(tmp_path) == "folder"
    assert source_kind(tmp_path / "v.mp4") == "file"
    assert [is_live(u) for u in ("rtsp://cam/1", "udp://127.0.0.1:5000", "file:///a.mp4", "a.mp4")] \
        == [True, True, False, False]
    with pytest.raises(FileNotFoundError, match="no such video file"):
        source_kind(tmp_path / "missing.mp4")


def test_live_clock_follows_stream_time_and_survives_reconnects():
    c = _LiveClock(origin=100.0)
    # First connection: the first frame arrives 2 s after the watch started, stream pts 50.
    assert c.time(50.0, 102.0) == pytest.approx(2.0)
    assert c.time(50.5, 102.9) == pytest.approx(2.5)  # stream time, not arrival jitter
    # The stream restarts its clock (pts back to 0): re-anchored at the wall clock.
    assert c.time(0.0, 103.5) == pytest.approx(3.5)
    assert c.time(0.2, 103.6) == pytest.approx(3.7)
    # A reconnect 10 s later: anchored where its first frame arrived.
    c.reconnect()
    assert c.time(7.0, 113.8) == pytest.approx(13.8)
    # A pts jump far ahead of the wall clock re-anchors too.
    assert c.time(500.0, 114.0) == pytest.approx(14.0)
