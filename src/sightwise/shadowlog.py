"""The shadow log: what a candidate answered on a copy of live traffic, beside the answer
the caller got from the primary model.

`sightwise serve --model NAME@production --shadow NAME@staging` writes one record per
shadowed request; `sightwise pipeline` (shadow stage) and `sightwise models promote
--require-shadow N` read them. Layout and format (the contract between the two)::

    $SIGHTWISE_HOME/shadow/NAME/<UTC time>-<pid>-<random>.jsonl   one file per writer

    {"v": 1, "time": 1764680000.123, "request_id": "8f0c...", "model": "steel",
     "sha256": "<image bytes' sha256, optional>",
     "primary": {"version": 3, "label": "crazing", "p": 0.97},
     "shadow":  {"version": 4, "label": "crazing", "p": 0.95},   # or {"version": 4, "error": "..."}
     "true_label": null}                                           # or a class name, when known

A record is one line, written with a single `write` on a file opened for appending, so a
writer killed mid-line leaves at most one torn last line, which the reader skips. The
writer never raises into the request it describes: a full disk or an unwritable folder
drops the record and counts it (`ShadowWriter.dropped`). Labels that arrive later (the
annotation tool's CSV) join records by the image's sha256 (`labels=` of `shadow_summary`).

Torch-free and stdlib-only apart from `sightwise.core`, so the server can use it.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from sightwise.core import validate_name

SCHEMA = 1
MAX_LINE = 64 << 10  # a record is ~300 bytes; a line this long is not one of ours


def shadow_home() -> Path:
    return Path(os.environ.get("SIGHTWISE_HOME") or "~/.sightwise").expanduser().absolute() / "shadow"


def shadow_dir(name: str, home: str | Path | None = None) -> Path:
    return (Path(home) if home is not None else shadow_home()) / validate_name(name)


def _answer(version, label, p, error) -> dict:
    if version is None or int(version) < 1:
        raise ValueError(f"a shadow record needs a model version >= 1, got {version!r}")
    if error is not None:
        return {"version": int(version), "error": str(error)[:500]}
    if not isinstance(label, str) or not label:
        raise ValueError("a shadow record's answer needs a label (or an error)")
    out = {"version": int(version), "label": label}
    if p is not None:
        p = float(p)
        if not (math.isfinite(p) and 0.0 <= p <= 1.0):
            raise ValueError(f"probability {p!r} is not in [0, 1]")
        out["p"] = p
    return out


def shadow_record(*, model: str, primary_version: int, primary_label: str,
                  shadow_version: int, shadow_label: str | None = None,
                  primary_p: float | None = None, shadow_p: float | None = None,
                  shadow_error: str | None = None, request_id: str | None = None,
                  sha256: str | None = None, true_label: str | None = None,
                  time_s: float | None = None) -> dict:
    """One validated record (raises ValueError on a malformed one)."""
    rec = {"v": SCHEMA, "time": float(time.time() if time_s is None else time_s),
           "request_id": request_id or secrets.token_hex(8), "model": validate_name(model),
           "primary": _answer(primary_version, primary_label, primary_p, None),
           "shadow": _answer(shadow_version, shadow_label, shadow_p, shadow_error),
           "true_label": true_label or None}
    if sha256:
        rec["sha256"] = str(sha256)
    return rec


class ShadowWriter:
    """Appends records to this process's own file under shadow/NAME/. Thread-safe; never
    raises from `append` (a record that cannot be written is dropped and counted)."""

    def __init__(self, name: str, home: str | Path | None = None):
        self.folder = shadow_dir(name, home)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.path = self.folder / f"{stamp}-{os.getpid()}-{secrets.token_hex(3)}.jsonl"
        self.written = 0
        self.dropped = 0
        self._fd: int | None = None
        self._lock = threading.Lock()

    def append(self, record: dict) -> bool:
        try:
            line = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
        except (TypeError, ValueError):
            self.dropped += 1
            return False
        if len(line) > MAX_LINE:
            self.dropped += 1
            return False
        with self._lock:
            try:
                if self._fd is None:
                    self.folder.mkdir(parents=True, exist_ok=True)
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                os.write(self._fd, line)  # one write per line: a kill leaves whole lines
                self.written += 1
                return True
            except OSError:
                self.dropped += 1
                return False

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                try:
                    os.fsync(self._fd)
                except OSError:
                    pass
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> ShadowWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _valid(rec) -> bool:
    if not isinstance(rec, dict) or not isinstance(rec.get("time"), (int, float)):
        return False
    return all(isinstance(rec.get(k), dict) and isinstance(rec[k].get("version"), int)
               for k in ("primary", "shadow"))


def read_shadow(name: str, home: str | Path | None = None, *, since: float | None = None,
                counts: dict | None = None) -> Iterator[dict]:
    """Every intact record of NAME (files in name order, lines in file order); torn or
    foreign lines are skipped and counted in `counts["skipped"]`."""
    folder = shadow_dir(name, home)
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.jsonl")):
        try:
            with open(path, "rb") as f:
                for line in f:
                    rec = None
                    if line.endswith(b"\n") and len(line) <= MAX_LINE:
                        try:
                            rec = json.loads(line)
                        except ValueError:
                            rec = None
                    if not _valid(rec):
                        if counts is not None:
                            counts["skipped"] = counts.get("skipped", 0) + 1
                        continue
                    if since is None or rec["time"] >= since:
                        yield rec
        except OSError:
            continue


def shadow_summary(name: str, version: int, *, home: str | Path | None = None,
                   labels: dict[str, str] | None = None, since: float | None = None) -> dict:
    """What the shadow log says about candidate VERSION of NAME: `n` answered shadow
    predictions, `errors`, `agreement` with the primary answer, and on the `labelled`
    ones (a record's true_label, or `labels[sha256]` from a later annotation) both models'
    accuracy. Records for other shadow versions are left out."""
    counts: dict = {}
    n = errors = agree = labelled = right_p = right_s = 0
    primaries: dict[int, int] = {}
    for rec in read_shadow(name, home, since=since, counts=counts):
        if rec["shadow"]["version"] != int(version):
            continue
        if "label" not in rec["shadow"]:
            errors += 1
            continue
        n += 1
        pv = rec["primary"]["version"]
        primaries[pv] = primaries.get(pv, 0) + 1
        p_label, s_label = rec["primary"].get("label"), rec["shadow"]["label"]
        agree += p_label == s_label
        truth = rec.get("true_label") or (labels or {}).get(rec.get("sha256") or "")
        if truth:
            labelled += 1
            right_p += p_label == truth
            right_s += s_label == truth
    return {"model": name, "version": int(version), "n": n, "errors": errors,
            "agreement": agree / n if n else None, "labelled": labelled,
            "primary_accuracy": right_p / labelled if labelled else None,
            "shadow_accuracy": right_s / labelled if labelled else None,
            "primary_versions": {str(k): v for k, v in sorted(primaries.items())},
            "skipped_lines": counts.get("skipped", 0)}
