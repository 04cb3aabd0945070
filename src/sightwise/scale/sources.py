"""Inputs as a lazy stream of paths, and a bounded pool that decodes them ahead of the model.

`iter_paths(inputs, recursive)` turns command-line inputs (image files, folders, CSV lists,
glob patterns) into paths one at a time: a folder of ten million files is never listed into
memory. Folders are walked in sorted order (each directory's entries sorted, sub-folders
placed as their full paths sort), so two runs over the same tree see the same order.
Hidden files and folders are left out and folder links are not followed (no loops).

`decoded(paths, prepare, workers)` runs `prepare(path)` on a thread pool with at most
`window` files in flight and yields the results in input order: decoding overlaps the
model (Pillow releases the GIL while decoding and resizing) and memory stays bounded.

`load_file(path)` reads a file once, hashes those bytes and decodes them; every failure
becomes a reason string (DESIGN.md principle 5: reported by path, never fatal). `precheck`
gives the same reasons from `stat` alone, for engines that read the bytes elsewhere (Ray).
"""

from __future__ import annotations

import csv
import glob
import itertools
import os
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from sightwise.core import sha256_bytes
from sightwise.data.decode import MAX_FILE_BYTES, decode_image, is_image_path, read_regular_file
from sightwise.errors import DataError, ImageDecodeError

T = TypeVar("T")
GLOB_CHARS = frozenset("*?[")
CSV_PATH_COLUMNS = ("path", "image", "file", "filename", "filepath")


# -- paths ---------------------------------------------------------------------------------


def iter_paths(inputs: Sequence[str | Path] | str | Path, *, recursive: bool = False
               ) -> Iterator[str]:
    """Every input path, lazily: files as given, folders walked (their sub-folders too when
    `recursive`), CSV lists read row by row, glob patterns expanded (`**` when recursive).

    A name that is none of these is yielded as is, so its row reports "file not found".
    """
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            yield from walk_folder(path, recursive=recursive)
        elif path.is_file() and path.suffix.lower() == ".csv":
            yield from csv_paths(path)
        elif not path.exists() and GLOB_CHARS & set(text):
            yield from _glob(text, recursive)
        else:
            yield text


def walk_folder(root: Path, *, recursive: bool = True) -> Iterator[str]:
    """Image files under `root`, depth first, in the order sorted() of their paths gives
    (a folder `a` sorts as `a/`, so `a.png` comes before `a/b.png`)."""
    try:
        with os.scandir(root) as it:
            entries = [(e.name + "/" if _is_dir(e) else e.name, e) for e in it
                       if not e.name.startswith(".")]
    except OSError as exc:
        raise DataError(f"{root}: cannot list folder ({exc.strerror or exc})") from None
    for key, entry in sorted(entries, key=lambda t: t[0]):
        if key.endswith("/"):
            if recursive:
                yield from walk_folder(Path(entry.path), recursive=True)
        elif is_image_path(Path(entry.name)) and entry.is_file():
            yield entry.path


def subfolders(root: Path) -> int:
    """How many visible sub-folders `root` has (to warn when --recursive was forgotten)."""
    with os.scandir(root) as it:
        return sum(1 for e in it if not e.name.startswith(".") and _is_dir(e))


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def csv_paths(path: Path) -> Iterator[str]:
    """Paths from a CSV list: the column named path (or image, file, filename, filepath),
    else the first column of a header-less file. Relative paths are taken from the CSV's
    folder. Read row by row; blank rows are skipped."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        first = next(rows, None)
        if first is None:
            return
        header = [h.strip().lower() for h in first]
        named = [c for c in CSV_PATH_COLUMNS if c in header]
        col = header.index(named[0]) if named else 0
        body = rows if named else itertools.chain([first], rows)
        for rec in body:
            if len(rec) > col and rec[col].strip():
                p = Path(rec[col].strip())
                yield str(p if p.is_absolute() else path.parent / p)


def _glob(pattern: str, recursive: bool) -> Iterator[str]:
    for name in glob.iglob(pattern, recursive=recursive):
        p = Path(name)
        if is_image_path(p) and p.is_file():
            yield name


def count_paths(inputs, *, recursive: bool = False, skip: Callable[[str], bool] | None = None
                ) -> int:
    """How many paths `iter_paths` yields (minus those `skip` accepts): a listing pass
    that keeps nothing, so the progress bar can show an ETA."""
    return sum(1 for p in iter_paths(inputs, recursive=recursive) if skip is None or not skip(p))


def batched(items: Iterable[T], n: int) -> Iterator[list[T]]:
    """Lists of `n` items (the last may be shorter).

    >>> list(batched(range(5), 2))
    [[0, 1], [2, 3], [4]]
    """
    it = iter(items)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


# -- reading and decoding ------------------------------------------------------------------


@dataclass
class Loaded:
    """One input after reading and decoding: `image` and `sha256`, or `error`. `array` is
    the image already resized for the model, when the consumer asked for that."""

    path: str
    sha256: str | None = None
    image: Image.Image | None = None
    error: str | None = None
    array: np.ndarray | None = None


def precheck(path: str) -> str | None:
    """The reason a file cannot be read, from `stat` alone (None: readable). The same
    words `load_file` uses, so every engine reports a bad file alike."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "file not found"
    except OSError as exc:
        return f"cannot read file ({exc.strerror or exc})"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory"
    if not stat.S_ISREG(st.st_mode):
        return "cannot read file (not a regular file (a device, FIFO or socket))"
    if st.st_size > MAX_FILE_BYTES:
        return (f"cannot read file (file of {st.st_size:,} bytes exceeds the limit of "
                f"{MAX_FILE_BYTES:,})")
    if not os.access(path, os.R_OK):
        return "cannot read file (Permission denied)"
    return None


def load_bytes(path: str, data: bytes) -> Loaded:
    """Hash and decode bytes already read; a decoding failure becomes `error`."""
    try:
        return Loaded(path, sha256_bytes(data), decode_image(data))
    except ImageDecodeError as exc:
        return Loaded(path, sha256_bytes(data), error=str(exc))
    except Exception as exc:  # a decoder bug must cost one row, not the run
        return Loaded(path, sha256_bytes(data), error=f"decoding failed ({type(exc).__name__}: {exc})")


def load_file(path: str) -> Loaded:
    """Read once (regular files only, size-limited), hash, decode."""
    reason = precheck(path)
    if reason is not None:
        return Loaded(path, error=reason)
    try:
        data = read_regular_file(path)
    except OSError as exc:  # it changed between the check and the read
        return Loaded(path, error=f"cannot read file ({exc.strerror or exc})")
    return load_bytes(path, data)


def decoded(paths: Iterable[str], prepare: Callable[[str], T], *, workers: int = 2,
            window: int = 64) -> Iterator[T]:
    """`prepare(path)` for each path on `workers` threads, at most `window` in flight,
    results in input order. `prepare` should turn expected failures into values."""
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode") as pool:
        pending: deque = deque()
        for path in paths:
            pending.append(pool.submit(prepare, path))
            if len(pending) >= max(1, window):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
