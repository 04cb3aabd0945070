"""The labels file: append-only, fsynced, resumable, one writer, survives kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sightwise.label.store import (
    HEADER,
    SKIP,
    UNDO,
    Answer,
    LabelFileError,
    LabelStore,
    check_class_names,
    final_labels,
    read_answers,
)


def ans(path, label, who="ann"):
    return Answer(path, label, who, "2024-01-01T00:00:00Z", "v1", "cat", 0.75)


def test_rows_are_appended_and_read_back(tmp_path):
    out = tmp_path / "labels.csv"
    with LabelStore(out) as store:
        store.append(ans("a.png", "cat"))
        store.append(ans("b,with comma.png", "dog"))
    lines = out.read_text().splitlines()
    assert lines[0] == ",".join(HEADER)
    assert lines[1] == "a.png,cat,ann,2024-01-01T00:00:00Z,v1,cat,0.750000"
    assert read_answers(out) == [ans("a.png", "cat"), ans("b,with comma.png", "dog")]


def test_reopening_continues_the_same_history(tmp_path):
    out = tmp_path / "labels.csv"
    with LabelStore(out) as store:
        store.append(ans("a.png", "cat"))
    with LabelStore(out) as store:
        assert [a.path for a in store.answers] == ["a.png"]
        store.append(ans("b.png", "dog"))
    assert final_labels(read_answers(out)) == {"a.png": "cat", "b.png": "dog"}


def test_undo_and_skip_replay():
    rows = [ans("a", "cat", "x"), ans("a", "dog", "y"), ans("a", UNDO, "x"), ans("b", "cat", "x"),
            ans("b", SKIP, "y"), ans("c", "cat", "x"), ans("c", UNDO, "x")]
    # x's undo of a withdraws x's own answer (cat), so y's dog stands; c is withdrawn entirely.
    assert final_labels(rows) == {"a": "dog"}


def test_a_torn_last_line_is_cut_off_and_writing_continues(tmp_path):
    out = tmp_path / "labels.csv"
    with LabelStore(out) as store:
        store.append(ans("a.png", "cat"))
    with open(out, "ab") as f:
        f.write(b"b.png,do")  # a write that a crash cut short: never confirmed
    with LabelStore(out) as store:
        assert "incomplete last line" in store.notes[0]
        store.append(ans("c.png", "dog"))
    assert [a.path for a in read_answers(out)] == ["a.png", "c.png"]


def test_a_second_writer_is_refused(tmp_path):
    out = tmp_path / "labels.csv"
    with LabelStore(out):
        with pytest.raises(LabelFileError, match="in use by another"):
            LabelStore(out)


def test_a_file_that_is_not_a_labels_file_is_refused(tmp_path):
    other = tmp_path / "manifest.csv"
    other.write_text("path,label\na.png,cat\n")
    with pytest.raises(LabelFileError, match="not a labels file"):
        LabelStore(other)
    assert other.read_text() == "path,label\na.png,cat\n"  # untouched


def test_class_names_are_checked():
    assert check_class_names(["a", " b "]) == ["a", "b"]
    for bad, msg in ((["a", "a"], "twice"), (["a"], "at least 2"), (["a", "x/y"], "slashes"),
                     (["a", ""], "empty")):
        with pytest.raises(LabelFileError, match=msg):
            check_class_names(bad)


def test_paths_are_relative_to_the_csv_folder(tmp_path):
    (tmp_path / "pool").mkdir()
    with LabelStore(tmp_path / "labels.csv") as store:
        assert store.key(tmp_path / "pool" / "x.png") == "pool/x.png"
        assert store.resolve("pool/x.png") == (tmp_path / "pool" / "x.png").resolve()


CHILD = Path(__file__).with_name("_append_child.py")


def test_kill_9_loses_no_confirmed_answer(tmp_path):
    """SIGKILL a writer after 1, 7, 40 and 150 confirmed answers: every confirmed answer is
    in the file, the file parses, and the next writer continues it."""
    out = tmp_path / "labels.csv"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    confirmed: list[int] = []
    start = 0
    for stop_after in (1, 7, 40, 150):
        proc = subprocess.Popen([sys.executable, str(CHILD), str(out), str(start)],
                                stdout=subprocess.PIPE, text=True, env=env)
        assert proc.stdout.readline().strip() == "ready"
        seen = 0
        for line in proc.stdout:
            confirmed.append(int(line))
            seen += 1
            if seen >= stop_after:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        rows = read_answers(out)  # parses: no torn row survives a reopen, at most one is ignored
        on_disk = [int(a.path[4:10]) for a in rows]
        assert set(confirmed) <= set(on_disk)
        start = max(on_disk) + 1
        with LabelStore(out):  # a restart cuts off a torn tail, if any
            pass
    final = read_answers(out)
    assert [int(a.path[4:10]) for a in final] == sorted({int(a.path[4:10]) for a in final})
