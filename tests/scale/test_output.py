"""The resumable writer: whole rows only, a cut last line removed, done paths skipped,
Parquet rebuilt from the journal and read back equal to the CSV (pyarrow vs the csv module)."""

from __future__ import annotations

import csv

import pytest

from sightwise.scale.batch import columns
from sightwise.scale.output import (
    DoneSet,
    OutputError,
    RowWriter,
    cut_partial_line,
    path_key,
    read_rows,
)

NAMES = columns(2)


def _rows(start, n, error_every=4):
    out = []
    for i in range(start, start + n):
        bad = i % error_every == 0
        out.append({"path": f"/img/{i}, \"q\".png", "label": None if bad else f"c{i % 3}",
                    "probability": None if bad else 1 / (i + 2), "model_version": "local-x",
                    "error": "not an image" if bad else None, "sha256": f"{i:064x}",
                    "label_2": None if bad else "c9", "probability_2": None if bad else 0.0})
    return out


def test_cut_partial_line(tmp_path):
    p = tmp_path / "j.csv"
    p.write_bytes(b"a,b\n1,2\n3,")
    assert cut_partial_line(p) == 2 and p.read_bytes() == b"a,b\n1,2\n"
    assert cut_partial_line(p) == 0
    p.write_bytes(b"x" * 200_000)  # no newline at all: nothing whole to keep
    assert cut_partial_line(p) == 200_000 and p.read_bytes() == b""


def test_resume_skips_what_is_written_and_drops_a_cut_row(tmp_path):
    out = tmp_path / "p.csv"
    with RowWriter(out, NAMES) as w:
        w.write(_rows(0, 5))
    with open(out, "ab") as f:
        f.write(b"/img/99.png,c1,0.5,local-x")  # a row cut off by kill -9
    with pytest.raises(OutputError, match="--resume"):
        RowWriter(out, NAMES)
    w = RowWriter(out, NAMES, resume=True)
    assert len(w.done) == 5 and _rows(0, 1)[0]["path"] in w.done
    assert "/img/99.png" not in w.done and "/img/5.png" not in w.done
    w.write(_rows(5, 3))
    w.finish()
    with open(out, newline="") as f:
        got = list(csv.DictReader(f))
    assert [r["path"] for r in got] == [r["path"] for r in _rows(0, 8)]
    with pytest.raises(OutputError, match="columns"):
        RowWriter(out, columns(3), resume=True)


def test_parquet_equals_csv_and_resumes(tmp_path):
    pytest.importorskip("pyarrow")
    rows = _rows(0, 10)
    with RowWriter(tmp_path / "p.csv", NAMES) as w:
        w.write(rows)
    w = RowWriter(tmp_path / "p.parquet", NAMES)
    w.write(rows[:6])
    w.close()  # interrupted: only the journal exists
    assert not (tmp_path / "p.parquet").exists()
    w = RowWriter(tmp_path / "p.parquet", NAMES, resume=True)
    assert len(w.done) == 6
    w.write(rows[6:])
    w.finish()
    assert not (tmp_path / "p.parquet.partial.csv").exists()
    assert list(read_rows(tmp_path / "p.parquet")) == list(read_rows(tmp_path / "p.csv")) == rows
    w = RowWriter(tmp_path / "p.parquet", NAMES, resume=True)  # a finished file resumes too
    assert len(w.done) == 10
    w.write(_rows(10, 1))
    w.finish()
    assert [r["path"] for r in read_rows(tmp_path / "p.parquet")] == [r["path"] for r in _rows(0, 11)]


def test_one_writer_at_a_time_and_known_formats(tmp_path):
    w = RowWriter(tmp_path / "p.csv", NAMES)
    with pytest.raises(OutputError, match="another run"):
        RowWriter(tmp_path / "p.csv", NAMES, resume=True)
    w.close()
    with pytest.raises(OutputError, match=".csv or .parquet"):
        RowWriter(tmp_path / "p.json", NAMES)


def test_done_set_is_exact_membership():
    keys = [path_key(f"/x/{i}.png") for i in range(1000)]
    done = DoneSet(keys)
    assert all(f"/x/{i}.png" in done for i in range(1000))
    assert not any(f"/x/{i}.png" in done for i in range(1000, 2000))
