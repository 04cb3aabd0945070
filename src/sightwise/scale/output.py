"""Prediction output that survives `kill -9`: a CSV journal, appended and fsynced per batch.

CSV output is written in place: rows are appended as batches finish, each batch flushed
and fsynced, so a killed run leaves whole rows and at most one partial last line.
`--resume` cuts that partial line off, checks the header, and skips every path already
written: each input file ends up in the output exactly once.

Parquet cannot be appended to (its footer is written last), so `preds.parquet` is built
from the same journal, `preds.parquet.partial.csv`, when the run finishes (streamed batch
by batch through pyarrow, then renamed into place). Resuming a finished Parquet file turns
it back into a journal first. pyarrow is needed for Parquet only (`sightwise[scale]`).

The set of done paths is kept as sorted 64-bit hashes (8 bytes a file), not strings.
"""

from __future__ import annotations

import csv
import hashlib
import os
from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sightwise.errors import SightwiseError

try:  # advisory lock so two runs never append to one file; POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

PARTIAL = ".partial.csv"
FORMATS = (".csv", ".parquet")


class OutputError(SightwiseError):
    """An output file that cannot be written or resumed as asked."""


def path_key(path: str) -> int:
    """64-bit hash of a path (collisions: ~1 in 10^12 for 10 million files).

    >>> path_key("a.png") == path_key("a.png") != path_key("b.png")
    True
    """
    return int.from_bytes(hashlib.blake2b(path.encode("utf-8", "surrogateescape"),
                                          digest_size=8).digest(), "little")


class DoneSet:
    """Membership of already-written paths, as a sorted uint64 array."""

    def __init__(self, keys=()):
        self.keys = np.sort(np.frombuffer(array("Q", keys), np.uint64))

    def __contains__(self, path: str) -> bool:
        k = np.uint64(path_key(path))
        i = int(np.searchsorted(self.keys, k))
        return i < len(self.keys) and self.keys[i] == k

    def __len__(self) -> int:
        return len(self.keys)


def check_format(out: str | Path) -> str:
    """'csv' or 'parquet' from the suffix; Parquet needs pyarrow (checked before any work)."""
    suffix = Path(out).suffix.lower()
    if suffix not in FORMATS:
        raise OutputError(f"{out}: --out must end in .csv or .parquet")
    if suffix == ".parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise OutputError("Parquet output needs pyarrow: pip install 'sightwise[scale]' "
                              "(or write .csv)") from None
    return suffix[1:]


class RowWriter:
    """Append rows (dicts with `names` as keys) to the journal; `finish()` when done."""

    def __init__(self, out: str | Path, names: list[str], *, resume: bool = False):
        self.out = Path(out)
        self.format = check_format(self.out)
        self.names = list(names)
        self.journal = self.out if self.format == "csv" else self.out.with_name(self.out.name + PARTIAL)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.done = self._prepare(resume)
        self._file = open(self.journal, "a", newline="", encoding="utf-8")  # noqa: SIM115
        self._lock()
        self._csv = csv.writer(self._file, lineterminator="\n")
        if self._file.tell() == 0:
            self._csv.writerow(self.names)
            self._sync()

    def _prepare(self, resume: bool) -> DoneSet:
        existing = [p for p in (self.out, self.journal) if p.exists()]
        if existing and not resume:
            raise OutputError(f"{existing[0]} exists; pass --resume to skip the files it "
                              "already holds, or choose another --out")
        if self.format == "parquet" and self.out.exists() and not self.journal.exists():
            parquet_to_journal(self.out, self.journal)
        if not self.journal.exists():
            return DoneSet()
        cut_partial_line(self.journal)
        with open(self.journal, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                return DoneSet()
            if header != self.names:
                raise OutputError(f"{self.journal} has columns {','.join(header)}; this run "
                                  f"writes {','.join(self.names)} (same --top-k as before?)")
            return DoneSet(path_key(rec[0]) for rec in reader if rec)

    def _lock(self) -> None:
        if fcntl is None:
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise OutputError(f"{self.journal} is being written by another run") from None

    def write(self, rows: list[dict]) -> None:
        """Append whole rows, then flush and fsync: a kill leaves complete rows behind."""
        self._csv.writerows([["" if r.get(c) is None else r[c] for c in self.names] for r in rows])
        self._sync()

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def finish(self) -> Path:
        """Close; for Parquet, convert the journal and remove it. Returns the output path."""
        self.close()
        if self.format == "parquet":
            journal_to_parquet(self.journal, self.out, self.names)
            self.journal.unlink()
        return self.out

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def cut_partial_line(path: Path) -> int:
    """Truncate a file after its last newline (a row cut off by a kill); returns the bytes
    removed. Scans backwards from the end, so a large file is not read."""
    with open(path, "r+b") as f:
        end = f.seek(0, os.SEEK_END)
        pos = end
        while pos > 0:
            step = min(pos, 1 << 16)
            f.seek(pos - step)
            chunk = f.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = pos - step + nl + 1
                break
            pos -= step
        else:
            keep = 0
        if keep < end:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        return end - keep


# -- Parquet -------------------------------------------------------------------------------


def arrow_schema(names: list[str]):
    import pyarrow as pa

    return pa.schema([(n, pa.float64() if n.startswith("probability") else pa.string())
                      for n in names])


def journal_to_parquet(journal: Path, out: Path, names: list[str]) -> None:
    """Stream the CSV journal into a Parquet file beside `out`, then rename it into place.
    Empty CSV fields become nulls (error, label of an unreadable file)."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    schema = arrow_schema(names)
    reader = pcsv.open_csv(
        journal, parse_options=pcsv.ParseOptions(newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(column_types=schema, strings_can_be_null=True,
                                            null_values=[""], include_columns=names))
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with pq.ParquetWriter(tmp, schema) as w:
            for batch in reader:
                w.write_batch(batch)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def parquet_to_journal(out: Path, journal: Path) -> None:
    """A finished Parquet file back into a journal, to resume (append to) it."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(out)
    tmp = journal.with_name(f".{journal.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(pf.schema_arrow.names)
        for batch in pf.iter_batches():
            cols = batch.to_pydict()
            w.writerows(zip(*[["" if v is None else v for v in cols[n]] for n in cols], strict=True))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, journal)


def read_rows(path: str | Path) -> Iterator[dict]:
    """Rows of a CSV or Parquet prediction file as dicts: empty fields are None and
    probabilities floats, whichever the format."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches():
            yield from batch.to_pylist()
        return
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            yield {k: (None if v == "" else float(v) if k.startswith("probability") else v)
                   for k, v in row.items()}
