"""The labels file: an append-only CSV, one row per answer, fsynced before it is confirmed.

Columns: ``path,label,annotator,time,model_version,suggested,suggested_p``. `label` is a
class name or one of two markers: ``!skip`` (the annotator passed on the image) and
``!undo`` (the annotator's most recent answer for that path is withdrawn). Nothing is ever
rewritten, so a crash, a closed tab or `kill -9` can only lose an answer that was never
confirmed; `final_labels` replays the rows into one label per image.

`path` is relative to the CSV's own folder when the image lies below it or beside it (the
same rule `sightwise train` applies to a CSV manifest), so the pair moves together.

Why a CSV and not SQLite: people open it in a spreadsheet, diff it, and `train` reads the
same shape; one `write` + `fsync` per answer costs well under the time a person needs to
press a key.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sightwise.errors import SightwiseError

HEADER = ("path", "label", "annotator", "time", "model_version", "suggested", "suggested_p")
SKIP, UNDO = "!skip", "!undo"
MARKERS = (SKIP, UNDO)


class LabelFileError(SightwiseError):
    """The labels file cannot be used (not ours, unreadable, or in use by another process)."""


def check_class_names(classes: list[str]) -> list[str]:
    """Class names become CSV cells, folder names and keyboard choices: refuse the ones
    that cannot be all three.

    >>> check_class_names(["ok", "scratch"])
    ['ok', 'scratch']
    >>> check_class_names(["a", "!skip"])
    Traceback (most recent call last):
    ...
    sightwise.label.store.LabelFileError: class name '!skip' may not start with '!' (reserved for markers)
    """
    out = []
    for c in classes:
        name = c.strip() if isinstance(c, str) else ""
        if not name:
            raise LabelFileError("class names must not be empty")
        if name.startswith("!"):
            raise LabelFileError(f"class name {name!r} may not start with '!' (reserved for markers)")
        if any(ch in name for ch in "\n\r\t/\\") or name in (".", "..") or len(name) > 100:
            raise LabelFileError(f"class name {name!r}: use at most 100 characters, no slashes, "
                                 "tabs or line breaks")
        if name in out:
            raise LabelFileError(f"class {name!r} is listed twice")
        out.append(name)
    if len(out) < 2:
        raise LabelFileError(f"need at least 2 classes, got {out}")
    return out


@dataclass(frozen=True)
class Answer:
    path: str  # as written in the file (relative to the CSV's folder, or absolute)
    label: str
    annotator: str
    time: str
    model_version: str = ""
    suggested: str = ""
    suggested_p: float | None = None

    def row(self) -> list[str]:
        p = "" if self.suggested_p is None else f"{self.suggested_p:.6f}"
        return [self.path, self.label, self.annotator, self.time, self.model_version,
                self.suggested, p]


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_answers(text: str, source: str = "labels") -> tuple[list[Answer], int, str | None]:
    """(answers, bytes of complete lines, note about a torn last line or None)."""
    complete = text if text.endswith("\n") or not text else text[: text.rfind("\n") + 1]
    note = None
    if len(complete) < len(text):
        note = (f"{source}: ignored an incomplete last line ({len(text) - len(complete)} "
                "bytes, never confirmed: written when the process was killed)")
    rows = list(csv.reader(io.StringIO(complete)))
    if not rows:
        return [], len(complete.encode("utf-8")), note
    if tuple(h.strip().lower() for h in rows[0]) != HEADER:
        raise LabelFileError(f"{source}: not a labels file (its header is {rows[0]}, "
                             f"expected {','.join(HEADER)})")
    answers = []
    for lineno, rec in enumerate(rows[1:], start=2):
        if not rec:
            continue
        if len(rec) != len(HEADER):
            raise LabelFileError(f"{source}:{lineno}: expected {len(HEADER)} columns, got {len(rec)}")
        p = rec[6].strip()
        try:
            prob = float(p) if p else None
        except ValueError:
            raise LabelFileError(f"{source}:{lineno}: suggested_p {p!r} is not a number") from None
        answers.append(Answer(rec[0], rec[1], rec[2], rec[3], rec[4], rec[5], prob))
    return answers, len(complete.encode("utf-8")), note


def read_answers(path: str | Path) -> list[Answer]:
    """Every answer in a labels file, in the order written (a torn last line is ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabelFileError(f"labels file not found: {path}") from None
    return parse_answers(text, str(path))[0]


def replay(answers: list[Answer]) -> dict[str, list[Answer]]:
    """path -> the answers still standing after every `!undo` withdrew its target: the
    undoing annotator's latest answer for that path (or the latest of anyone's)."""
    standing: dict[str, list[Answer]] = {}
    for a in answers:
        stack = standing.setdefault(a.path, [])
        if a.label != UNDO:
            stack.append(a)
            continue
        for i in range(len(stack) - 1, -1, -1):
            if stack[i].annotator == a.annotator:
                del stack[i]
                break
        else:
            if stack:
                stack.pop()
    return standing


def final_labels(answers: list[Answer]) -> dict[str, str]:
    """path -> class, the last standing answer per image; skipped images are left out.

    >>> rows = [Answer("a.png", "cat", "ann", "t"), Answer("b.png", "dog", "ann", "t"),
    ...         Answer("a.png", "dog", "bob", "t"), Answer("a.png", UNDO, "bob", "t"),
    ...         Answer("b.png", SKIP, "ann", "t")]
    >>> final_labels(rows)
    {'a.png': 'cat'}
    """
    out = {}
    for path, stack in replay(answers).items():
        if stack and stack[-1].label not in MARKERS:
            out[path] = stack[-1].label
    return out


def final_states(answers: list[Answer]) -> dict[str, str]:
    """path -> class or SKIP for every image with a standing answer."""
    return {p: s[-1].label for p, s in replay(answers).items() if s}


class LabelStore:
    """Open (or create) a labels file for appending; one process at a time.

    Every `append` writes one complete CSV line with a single write() on an O_APPEND
    descriptor, then fsyncs it: once `append` returns, the answer survives kill -9 and a
    power cut. A line torn by a crash before that point was never confirmed and is cut off
    when the file is opened again.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.base = self.path.parent.resolve()
        if self.path.is_dir():
            raise LabelFileError(f"{self.path} is a folder; give the labels CSV file to write")
        self.base.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self._lock()
            self.answers, self.notes = self._load(created)
        except BaseException:
            os.close(self._fd)
            raise

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks, one writer by care
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LabelFileError(f"{self.path} is in use by another labelling process; "
                                 "stop it first or write to another file") from None

    def _load(self, created: bool) -> tuple[list[Answer], list[str]]:
        data = b""
        with open(self.path, "rb") as f:
            data = f.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise LabelFileError(f"{self.path}: not a UTF-8 labels file") from None
        answers, good_bytes, note = parse_answers(text, str(self.path))
        notes = [note] if note else []
        if good_bytes < len(data):
            os.ftruncate(self._fd, good_bytes)  # the unconfirmed fragment of a killed write
        if good_bytes == 0:
            self._write_line(HEADER)
            if created:
                _fsync_dir(self.base)
        return answers, notes

    def key(self, image: str | Path) -> str:
        """How `image` is written in the file: relative to the CSV's folder when that
        stays short (below it, or one level up), else absolute; always with '/'."""
        p = Path(image).resolve()
        rel = os.path.relpath(p, self.base)
        if rel.startswith(".." + os.sep + ".."):
            return p.as_posix()
        return Path(rel).as_posix()

    def resolve(self, key: str) -> Path:
        p = Path(key)
        return p if p.is_absolute() else (self.base / p).resolve()

    def append(self, answer: Answer) -> Answer:
        if any("\n" in c or "\r" in c for c in answer.row()):
            raise LabelFileError("a labels row may not contain line breaks")
        self._write_line(answer.row())
        self.answers.append(answer)
        return answer

    def _write_line(self, cells) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(cells)
        data = buf.getvalue().encode("utf-8")
        written = os.write(self._fd, data)
        if written != len(data):  # a full disk; the short line is cut off at the next open
            raise LabelFileError(f"{self.path}: short write ({written} of {len(data)} bytes)")
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # also releases the lock
            self._fd = -1

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fsync_dir(folder: Path) -> None:
    """Make a newly created file's directory entry durable too."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
