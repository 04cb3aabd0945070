"""The prediction log: round trip, order across writers, kill -9, torn lines, retention, a
full or unwritable disk, a full queue."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sightwise.monitor import log as plog
from sightwise.monitor.log import (
    PredictionLog,
    decode_line,
    encode_line,
    enforce_retention,
    read_records,
)

WRITER = Path(__file__).parent / "_log_writer.py"


def rec(i: int, **extra) -> dict:
    return {"t": 1000.0 + i, "seq": i, "sha256": f"{i:064x}", "probs": [0.5, 0.5], **extra}


def wait_for(predicate, timeout: float = 20.0) -> bool:
    """Poll a condition (bounded); the tests assert outcomes, never durations."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_round_trip_and_line_format(tmp_path):
    with PredictionLog(tmp_path) as log:
        assert all(log.append(rec(i)) for i in range(25))
        assert log.flush()
        assert log.status()["written"] == 25 and log.status()["lag_s"] == 0.0
    assert [r["seq"] for r in read_records(tmp_path)] == list(range(25))
    line = encode_line({"t": 1.0, "x": [1, 2]})
    assert decode_line(line) == {"t": 1.0, "x": [1, 2]}
    assert decode_line(line[:-1]) is None  # torn: no newline
    assert decode_line(line.replace(b"[1,2]", b"[1,3]")) is None  # CRC mismatch
    assert decode_line(b"00000000 [1]\n") is None


def test_reader_merges_writers_in_time_order_and_skips_garbage(tmp_path):
    a, b = PredictionLog(tmp_path), PredictionLog(tmp_path)
    for i in range(0, 40, 2):
        a.append(rec(i))
        b.append(rec(i + 1))
    a.close(), b.close()
    segs = sorted(tmp_path.glob("seg-*.jsonl"))
    assert len(segs) == 2
    with open(segs[0], "ab") as f:  # a torn tail and a garbled line
        f.write(b"0badc0de {\"t\": 5}\n" + encode_line(rec(99))[:-7])
    counts: dict = {}
    got = list(read_records(tmp_path, counts=counts))
    assert [r["seq"] for r in got] == list(range(40))
    assert counts["corrupt"] == 2
    assert [r["seq"] for r in read_records(tmp_path, since=1010, until=1020)] == list(range(10, 20))


def test_rotation_by_size_keeps_every_record(tmp_path):
    with PredictionLog(tmp_path, segment_bytes=2000) as log:
        for i in range(200):
            log.append(rec(i))
            if i % 20 == 0:
                log.flush()
    assert len(list(tmp_path.glob("seg-*.jsonl"))) > 3
    assert [r["seq"] for r in read_records(tmp_path)] == list(range(200))


def test_kill_9_loses_nothing_flushed_and_leaves_no_corrupt_record(tmp_path):
    """Five writers in turn, each SIGKILLed at a random moment while appending without pause:
    per run the records form an unbroken prefix (nothing lost in the middle, nothing torn)
    reaching at least the last sequence number reported flushed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    rnd = random.Random(7)
    flushed = {}
    for run in range(5):
        proc = subprocess.Popen([sys.executable, str(WRITER), str(tmp_path), str(run)],
                                stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert proc.stdout.readline().strip() == "ready"
            deadline = time.monotonic() + rnd.uniform(0.3, 1.0)
            last = -1
            while time.monotonic() < deadline or last < 0:
                ready, _, _ = select.select([proc.stdout], [], [], 5.0)
                assert ready, "writer stopped reporting"
                line = proc.stdout.readline()
                if line.startswith("flushed"):
                    last = int(line.split()[1])
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            flushed[run] = last
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
            proc.stdout.close()
    counts: dict = {}
    records = list(read_records(tmp_path, counts=counts))
    assert counts.get("corrupt", 0) == 0
    for run, last in flushed.items():
        seqs = [r["seq"] for r in records if r["run"] == run]
        assert seqs == list(range(len(seqs))), f"run {run}: a gap or a reordering"
        assert len(seqs) > last, f"run {run}: flushed up to {last}, only {len(seqs)} found"
        for r in records:
            if r["run"] == run and "img" in r:  # the image is written before its record
                assert (tmp_path / r["img"]).read_bytes() == bytes([run, r["seq"] % 256]) * 64


def test_retention_removes_old_and_over_size_segments_and_images(tmp_path):
    with PredictionLog(tmp_path, keep_images=True, segment_bytes=1500) as log:
        for i in range(60):
            log.append(rec(i), image=b"\x89PNG" + bytes([i]) * 2000)
            if i % 10 == 9:
                log.flush()
    segs = sorted(tmp_path.glob("seg-*.jsonl"))
    images = sorted(tmp_path.glob("images/*/*.png"))
    assert len(images) == 60 and len(segs) >= 4
    now = time.time()
    old = segs[:2] + images[:30]
    for p in old:
        os.utime(p, (now - 40 * 86400, now - 40 * 86400))
    removed = enforce_retention(tmp_path, 30 * 86400, 1 << 30, now=now)
    assert removed == {"segments": 2, "images": 30}
    assert not any(p.exists() for p in old)
    assert all(p.exists() for p in segs[2:] + images[30:])
    # Size cap: the oldest go first until the folder fits.
    cap = sum(p.stat().st_size for p in images[45:])
    removed = enforce_retention(tmp_path, 30 * 86400, cap, now=now)
    left = [p for p in images[30:] if p.exists()]
    assert sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()) <= cap
    assert left == images[60 - len(left):]  # the newest kept


def test_retention_runs_by_itself_in_the_writer(tmp_path):
    stale = tmp_path / "seg-00000000000000000001-1-aaaaaa.jsonl"
    stale.write_bytes(encode_line(rec(0)))
    os.utime(stale, (time.time() - 100, time.time() - 100))
    with PredictionLog(tmp_path, retain_s=50, maintenance_s=0.05) as log:
        log.append(rec(1))
        assert wait_for(lambda: not stale.exists())
        assert log.status()["removed_segments"] == 1


def test_a_failing_disk_never_raises_and_counts_the_loss(tmp_path, monkeypatch):
    def disk_full(fd, data):
        raise OSError(28, "No space left on device")

    with PredictionLog(tmp_path) as log:
        log.append(rec(0))
        log.flush()
        monkeypatch.setattr(plog, "write_all", disk_full)
        assert all(log.append(rec(i)) for i in range(1, 11))
        assert wait_for(lambda: log.status()["dropped_write_error"] == 10)
        status = log.status()
        assert not status["healthy"] and "No space" in status["last_error"]
        monkeypatch.undo()  # the disk has room again: logging resumes on a new segment
        log.append(rec(11))
        log.flush()
        assert log.status()["healthy"]
    assert [r["seq"] for r in read_records(tmp_path)] == [0, 11]


def test_an_unwritable_folder_never_raises(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the log folder should be")
    log = PredictionLog(blocker / "log")  # root can write anywhere; a file still blocks mkdir
    try:
        assert log.append(rec(0)) is True
        assert log.append({"t": float("nan")}) is True  # not JSON: dropped in the writer
        assert wait_for(lambda: log.status()["dropped_write_error"] == 2)
        assert log.status()["healthy"] is False
    finally:
        log.close()


def test_a_stalled_writer_never_blocks_append(tmp_path, monkeypatch):
    gate = threading.Event()
    real = plog.write_all

    def stalled(fd, data):
        gate.wait(30)
        real(fd, data)

    monkeypatch.setattr(plog, "write_all", stalled)
    log = PredictionLog(tmp_path, max_queue=10)
    try:
        log.append(rec(0))
        assert wait_for(lambda: log.status()["pending"] == 0)  # the writer holds record 0
        accepted = sum(log.append(rec(i)) for i in range(1, 1001))
        assert accepted == 10
        assert log.status()["dropped_queue_full"] == 990 and log.status()["dropped"] == 990
    finally:
        gate.set()
        log.close()
    assert [r["seq"] for r in read_records(tmp_path)] == list(range(11))


def test_images_only_when_kept(tmp_path):
    with PredictionLog(tmp_path / "a") as log:
        log.append(rec(0), image=b"\xff\xd8\xff" + b"x" * 10)
    with PredictionLog(tmp_path / "b", keep_images=True) as log:
        log.append(rec(0), image=b"\xff\xd8\xff" + b"x" * 10)
    assert not (tmp_path / "a" / "images").exists()
    (r,) = read_records(tmp_path / "b")
    assert r["img"] == f"images/00/{'0' * 64}.jpg"
    assert (tmp_path / "b" / r["img"]).read_bytes().startswith(b"\xff\xd8\xff")


@pytest.mark.parametrize("text,seconds", [("30d", 30 * 86400.0), ("2h", 7200.0), ("45", 45.0)])
def test_parse_retain(text, seconds):
    assert plog.parse_retain(text) == seconds


def test_parse_errors():
    with pytest.raises(ValueError):
        plog.parse_retain("soon")
    with pytest.raises(ValueError):
        plog.parse_size("lots")
