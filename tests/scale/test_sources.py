"""Inputs as a lazy stream, against references: sorted(rglob) for folders, Python's glob,
the CSV module; reasons for unreadable files equal across the two ways of reading; the
decode pool keeps input order and its bound."""

from __future__ import annotations

import csv
import glob
import os
import threading
import time
from pathlib import Path

import pytest

from sightwise.data.decode import is_image_path
from sightwise.scale.sources import (
    batched,
    decoded,
    iter_paths,
    load_bytes,
    load_file,
    precheck,
    walk_folder,
)


def _tree(root: Path) -> Path:
    for rel in ("a.png", "a/b.png", "a/c/d.jpg", "a-b/e.png", "z.PNG", "a/notes.txt",
                ".hidden/x.png", "a/.y.png", "b/f.webp"):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    (root / "loop").symlink_to(root, target_is_directory=True)  # never followed
    return root


def test_folder_walk_is_sorted_rglob_without_hidden_or_links(tmp_path):
    root = _tree(tmp_path / "t")
    want = sorted(str(p) for p in root.rglob("*") if p.is_file() and is_image_path(p)
                  and not any(part.startswith(".") for part in p.relative_to(root).parts)
                  and "loop" not in p.relative_to(root).parts)
    got = list(walk_folder(root))
    assert got == want
    assert list(iter_paths(root)) == [str(root / "a.png"), str(root / "z.PNG")]  # top only
    assert list(iter_paths([str(root)], recursive=True)) == want


def test_csv_lists_globs_and_plain_names(tmp_path):
    root = _tree(tmp_path / "t")
    with open(tmp_path / "list.csv", "w", newline="") as f:
        csv.writer(f).writerows([["label", "path"], ["x", "t/a.png"], ["y", str(root / "z.PNG")],
                                 ["", ""], ["z", "t/missing.png"]])
    assert list(iter_paths(tmp_path / "list.csv")) == [
        str(tmp_path / "t/a.png"), str(root / "z.PNG"), str(tmp_path / "t/missing.png")]
    (tmp_path / "bare.csv").write_text("t/a.png\nt/a/b.png\n")
    assert list(iter_paths(tmp_path / "bare.csv")) == [str(tmp_path / "t/a.png"),
                                                       str(tmp_path / "t/a/b.png")]
    pattern = str(root / "**" / "*.png")
    want = sorted(p for p in glob.glob(pattern, recursive=True) if is_image_path(Path(p)))
    assert sorted(iter_paths(pattern, recursive=True)) == want
    assert list(iter_paths(["nope.png"])) == ["nope.png"]  # reported later, not dropped


def test_unreadable_files_get_the_same_reason_either_way(tmp_path):
    (tmp_path / "d.png").mkdir()
    os.mkfifo(tmp_path / "f.png")  # a reader of a FIFO would block: refused from stat
    (tmp_path / "bad.png").write_bytes(b"hello")
    for name in ("missing.png", "d.png", "f.png"):
        reason = precheck(str(tmp_path / name))
        assert reason and load_file(str(tmp_path / name)).error == reason
    assert precheck(str(tmp_path / "bad.png")) is None
    item = load_file(str(tmp_path / "bad.png"))
    assert item.error == "not an image (unrecognised format)" and item.sha256
    assert load_bytes("x", b"hello") == item.__class__("x", item.sha256, error=item.error)


def test_decode_pool_keeps_order_and_its_bound():
    running, peak, lock = 0, 0, threading.Lock()

    def work(x):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.002 * (x % 3))  # out-of-order finishing
        with lock:
            running -= 1
        return x * 2

    consumed = []
    for i, y in enumerate(decoded(iter(range(200)), work, workers=4, window=8)):
        consumed.append(y)
        assert i < 200
    assert consumed == [2 * x for x in range(200)]
    assert peak <= 4


def test_batched_is_lazy():
    seen = []

    def gen():
        for i in range(10):
            seen.append(i)
            yield i

    it = batched(gen(), 3)
    assert next(it) == [0, 1, 2] and seen == [0, 1, 2]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files without read permission")
def test_permission_denied_is_a_reason(tmp_path):
    p = tmp_path / "locked.png"
    p.write_bytes(b"x")
    p.chmod(0)
    assert precheck(str(p)) == "cannot read file (Permission denied)"
