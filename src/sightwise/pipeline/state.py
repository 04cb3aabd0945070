"""Content-hash caching of stages, DVC-style, and the work folder's lock.

Each finished stage writes ``WORK/state/<stage>.json``: the hash of its inputs (the
canonical JSON of everything it read: upstream outputs, options, file fingerprints), the
inputs themselves (to say what changed) and its outputs. A rerun whose inputs hash the same,
and whose outputs are still on disk, skips the stage. A stage writes
``WORK/state/<stage>.started`` when it begins and removes it with its record, so a run
killed mid-stage (even by SIGKILL) leaves no record for it: the next run skips everything
before it and resumes there.
"""

from __future__ import annotations

import csv
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from sightwise.core import atomic_write_json, sha256_bytes
from sightwise.errors import SightwiseError


def digest(obj) -> str:
    """sha256 of canonical JSON (sorted keys, no spaces).

    >>> digest({"b": 1, "a": [1, 2]}) == digest({"a": [1, 2], "b": 1})
    True
    """
    return sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":"),
                                   default=str).encode("utf-8"))


def changed_keys(old: dict | None, new: dict) -> list[str]:
    """Top-level input keys whose values differ (for "ran: train changed").

    >>> changed_keys({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 0})
    ['b', 'c']
    """
    old = old or {}
    return sorted(k for k in set(old) | set(new) if digest(old.get(k)) != digest(new.get(k)))


def _stat_entry(path: Path, rel: str) -> list:
    try:
        st = path.stat()
        return [rel, st.st_size, st.st_mtime_ns]
    except OSError:
        return [rel, None, None]


def fingerprint(path: Path, *, exclude: Path | None = None) -> str:
    """Cheap fingerprint of a dataset: (relative path, size, mtime) of every file under a
    folder (links not followed, `exclude` left out), of a CSV manifest and the files its
    first column names, or of a single file. A changed fingerprint only means "look again":
    the data stage then hashes contents, and downstream stages key on its manifest's sha256."""
    path = Path(path)
    if path.is_dir():
        skip = exclude.resolve() if exclude is not None else None
        entries = []
        for dirpath, dirnames, filenames in os.walk(path):
            here = Path(dirpath)
            if skip is not None:
                dirnames[:] = [d for d in dirnames if (here / d).resolve() != skip]
            dirnames.sort()
            for f in sorted(filenames):
                entries.append(_stat_entry(here / f, (here / f).relative_to(path).as_posix()))
        return digest(entries)
    entries = [_stat_entry(path, path.name)]
    if path.suffix.lower() in (".csv", ".txt") and path.is_file():
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            for row in csv.reader(f):
                if row and row[0].strip() and row[0].strip().lower() != "path":
                    p = Path(row[0].strip())
                    entries.append(_stat_entry(p if p.is_absolute() else path.parent / p, row[0]))
    return digest(entries)


class StageState:
    """Records of finished stages under WORK/state/."""

    def __init__(self, work: Path):
        self.folder = Path(work) / "state"

    def load(self, stage: str) -> dict | None:
        try:
            rec = json.loads((self.folder / f"{stage}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) and "key" in rec else None

    def started(self, stage: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.folder / f"{stage}.started", {"pid": os.getpid(),
                                                              "time": time.time()})

    def finish(self, stage: str, key: str, inputs: dict, outputs: dict, seconds: float) -> None:
        atomic_write_json(self.folder / f"{stage}.json", {
            "stage": stage, "key": key, "inputs": inputs, "outputs": outputs,
            "seconds": round(seconds, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        (self.folder / f"{stage}.started").unlink(missing_ok=True)

    def forget(self, stage: str) -> None:
        """A stage that fails leaves no record, so the next run runs it again."""
        (self.folder / f"{stage}.json").unlink(missing_ok=True)

    def interrupted(self) -> list[str]:
        """Stages that started and never finished (their run was killed or crashed)."""
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.started"))


class WorkBusy(SightwiseError):
    """Another pipeline run holds this work folder."""


@contextmanager
def work_lock(work: Path):
    """One run per work folder at a time (a cron line that fires while the last run is
    still training must not race it). The kernel drops the lock if the holder dies."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    fd = os.open(work / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # Windows: no advisory locks here; runs are not serialised
            pass
        except BlockingIOError:
            raise WorkBusy(f"another `sightwise pipeline run` is using {work}; try again "
                           "when it finishes") from None
        yield
    finally:
        os.close(fd)
