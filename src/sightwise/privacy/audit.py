"""An append-only, hash-chained audit log (JSON Lines) and its verifier.

Each line is one record: `seq` (1, 2, 3, ...), `time` (UTC), `client`, `token_id` (a short
hash of the bearer token, never the token), `action`, `model_version`, `image_sha256`,
`result`, any extra fields, then `prev` (the sha256 of the previous line's bytes; 64 zeros
for the first) and `hash` (the sha256 of this record without `hash`). The chain makes every
change visible to `verify_audit`: an edited line no longer matches its own hash (or breaks
the next line's `prev`), a deleted line leaves a gap in `seq`, an inserted or moved line
breaks `seq` order and the chain. Removing lines from the END leaves a valid shorter log:
keep the head (`AuditLog.head()`: last seq and hash) somewhere else, e.g. in a ticket or
the server's answer to GET /v1/admin/audit, and pass it to `verify_audit(expect_head=...)`.

Writers: each record is appended under an exclusive lock (fcntl.flock), re-reading the last
line first, so several processes (server workers, a CLI) can share one log; each record is
fsync'ed before `append` returns, so an acknowledged record survives a crash.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

GENESIS = "0" * 64
FIELDS = ("time", "client", "token_id", "action", "model_version", "image_sha256", "result")
TAIL_BYTES = 1 << 16  # a record is far smaller; read this much from the end to find the last


def token_id(token: str | None) -> str | None:
    """A stable, non-reversible id for a bearer token: the first 16 hex of its sha256.

    >>> token_id("s3cret"), token_id(None)
    ('1ec1c26b50d5d3c5', None)
    """
    if not token:
        return None
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:16]


def _canonical(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str).encode("utf-8")


def _record_hash(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(_canonical(body)).hexdigest()


class AuditLog:
    """Append records to `path` (created with its folder, mode 0600).

    >>> import tempfile, pathlib
    >>> log = AuditLog(pathlib.Path(tempfile.mkdtemp()) / "audit.jsonl")
    >>> log.append("models.promote", client="127.0.0.1", token="s3cret")["seq"]
    1
    >>> verify_audit(log.path).ok
    True
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, action: str, *, client: str | None = None, token: str | None = None,
               model_version: str | None = None, image_sha256: str | None = None,
               result=None, **extra) -> dict:
        """Write one record and return it. `token` is hashed here, so it never reaches disk."""
        import fcntl

        if "token_id" in extra and token is None:
            tid = extra.pop("token_id")
        else:
            extra.pop("token_id", None)
            tid = token_id(token)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "r+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                seq, prev = _last(f)
                record = {"seq": seq + 1, "time": _now(), "client": client, "token_id": tid,
                          "action": action, "model_version": model_version,
                          "image_sha256": image_sha256, "result": result, **extra,
                          "prev": prev}
                record["hash"] = _record_hash(record)
                f.write(_canonical(record) + b"\n")
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return record

    def head(self) -> dict:
        """{"seq": last seq, "line_sha256": sha256 of the last line}: keep it to detect a cut tail."""
        if not self.path.exists():
            return {"seq": 0, "line_sha256": GENESIS}
        with open(self.path, "rb") as f:
            seq, line_hash = _last(f)
        return {"seq": seq, "line_sha256": line_hash}

    def tail(self, n: int = 100) -> list[dict]:
        """The last `n` records, oldest first (for GET /v1/admin/audit)."""
        if not self.path.exists() or n <= 0:
            return []
        with open(self.path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            chunk = min(size, max(TAIL_BYTES, n * 1024))
            f.seek(size - chunk)
            lines = f.read().splitlines()
        if chunk < size:
            lines = lines[1:]  # the first may be cut in the middle
        out = []
        for line in lines[-n:]:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # verify_audit reports it; a reader only skips it
        return out


def _last(f) -> tuple[int, str]:
    """(seq, sha256 of the line) of the last complete line of an open log file."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    if size == 0:
        return 0, GENESIS
    f.seek(max(0, size - TAIL_BYTES))
    lines = [ln for ln in f.read().split(b"\n") if ln.strip()]
    if not lines:
        return 0, GENESIS
    last = lines[-1]
    try:
        seq = int(json.loads(last)["seq"])
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{f.name}: the last line is not an audit record; run "
                         "`sightwise privacy verify-audit` on it before writing more") from None
    return seq, hashlib.sha256(last).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class AuditReport:
    path: str
    records: int = 0
    problems: list[str] = field(default_factory=list)
    head: dict = field(default_factory=lambda: {"seq": 0, "line_sha256": GENESIS})

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"path": self.path, "ok": self.ok, "records": self.records,
                "problems": self.problems, "head": self.head}


def verify_audit(path: str | Path, *, expect_head: dict | None = None) -> AuditReport:
    """Check every line of an audit log; `problems` say which line and what happened.

    `expect_head` ({"seq": n, "line_sha256": h}, as `AuditLog.head()` gave it earlier) also
    catches lines cut from the end.
    """
    path = Path(path)
    report = AuditReport(str(path))
    with open(path, "rb") as f:  # first pass: which seqs exist, to tell a move from a loss
        present = {s for s in (_seq_of(raw.rstrip(b"\n")) for raw in f) if s is not None}
    prev_hash, expected_seq = GENESIS, 1
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.rstrip(b"\n")
            if not line.strip():
                report.problems.append(f"line {lineno}: empty line (a record was blanked)")
                continue
            report.records += 1
            problem = _check_line(line, lineno, prev_hash, expected_seq, present)
            if problem:
                report.problems.append(problem)
            seq = _seq_of(line)
            expected_seq = (seq if seq is not None else expected_seq) + 1
            prev_hash = hashlib.sha256(line).hexdigest()
            if not raw.endswith(b"\n"):
                report.problems.append(f"line {lineno}: incomplete last record (cut off "
                                       "mid-write, or edited)")
    report.head = {"seq": expected_seq - 1, "line_sha256": prev_hash}
    want_seq, want_hash = (expect_head or {}).get("seq"), (expect_head or {}).get("line_sha256")
    if (want_seq is not None and int(want_seq) != report.head["seq"]) or (
            want_hash is not None and want_hash != prev_hash):
        report.problems.append(f"end of log: expected the last record to be seq "
                               f"{want_seq} with the recorded hash; found seq "
                               f"{report.head['seq']} (lines removed from the end, or added)")
    return report


def _check_line(line: bytes, lineno: int, prev_hash: str, expected_seq: int,
                present: set[int]) -> str | None:
    try:
        record = json.loads(line)
        seq = int(record["seq"])
    except (ValueError, KeyError, TypeError):
        return f"line {lineno}: not an audit record (edited or corrupted)"
    if record.get("hash") != _record_hash(record):
        return f"line {lineno} (seq {seq}): edited: its content does not match its hash"
    if seq > expected_seq and expected_seq in present:
        return (f"line {lineno} (seq {seq}): out of order: seq {expected_seq} comes later "
                "in the file (lines reordered)")
    if seq > expected_seq:
        missing = (f"seq {expected_seq}" if seq == expected_seq + 1
                   else f"seq {expected_seq}-{seq - 1}")
        return f"line {lineno} (seq {seq}): {missing} deleted before this line"
    if seq < expected_seq:
        return (f"line {lineno} (seq {seq}): out of order: expected seq {expected_seq} "
                "(lines reordered, or a record inserted or duplicated)")
    if record.get("prev") != prev_hash:
        return (f"line {lineno} (seq {seq}): chain broken: the previous line is not the one "
                "this record was written after (a line replaced or inserted before it)")
    return None


def _seq_of(line: bytes) -> int | None:
    try:
        return int(json.loads(line)["seq"])
    except (ValueError, KeyError, TypeError):
        return None
