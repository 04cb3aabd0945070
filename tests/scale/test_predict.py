"""Batch prediction against the reference `Predictor.predict_paths`: every file gets one
row (broken ones their error, the run goes on), CSV and Parquet hold the same rows, and
after kill -9 + --resume every file is in the output exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sightwise.cli import app
from sightwise.predict import model_version, predict_files, predict_stream, predict_to_file
from sightwise.runtime import Predictor
from sightwise.scale.output import read_rows
from sightwise.scale.sources import walk_folder

runner = CliRunner()
CONTRACT = ["path", "label", "probability", "model_version", "error"]


def _reference(bundle, paths, k=3) -> dict:
    return {p.source: p for p in Predictor(bundle).predict_paths(paths, top_k=k)}


def _quiet(_msg):
    pass


def test_rows_match_the_predictor_and_errors_do_not_stop_the_run(scale_bundle, folder, tmp_path):
    out = tmp_path / "preds.csv"
    summary = predict_to_file(scale_bundle, [folder], out, recursive=True, progress=False,
                              batch_size=5, log=_quiet)
    paths = list(walk_folder(folder))
    assert summary["written"] == len(paths) == 26 and summary["errors"] == 2
    assert out.read_text().splitlines()[0].split(",")[:5] == CONTRACT
    rows = {r["path"]: r for r in read_rows(out)}
    ref = _reference(scale_bundle, paths)
    from sightwise.bundle import load_bundle
    version = model_version(str(scale_bundle), load_bundle(scale_bundle))
    for path, pred in ref.items():
        row = rows[path]
        assert row["model_version"] == version
        if pred.error:
            assert row["error"] and row["label"] is None and row["probability"] is None
            continue
        assert row["error"] is None and len(row["sha256"]) == 64
        got = [(row["label"], row["probability"]), (row["label_2"], row["probability_2"]),
               (row["label_3"], row["probability_3"])]
        assert [g[0] for g in got] == [c.label for c in pred.top]
        assert [g[1] for g in got] == pytest.approx([c.probability for c in pred.top], abs=1e-5)
    assert rows[str(folder / "notes.png")]["error"] == "not an image (unrecognised format)"
    assert "truncated" in rows[str(folder / "cut.png")]["error"] or \
        "header" in rows[str(folder / "cut.png")]["error"]


def test_stream_equals_predict_files(scale_bundle, folder):
    paths = [str(p) for p in sorted(folder.rglob("*.png"))][:9] + [str(folder / "gone.png")]
    want = predict_files(scale_bundle, paths, top_k=2)
    got = list(predict_stream(scale_bundle, paths, top_k=2, batch_size=4))
    assert [p.source for p in got] == paths
    for g, w in zip(got, want, strict=True):
        assert [c.label for c in g.top] == [c.label for c in w.top]
        assert [c.probability for c in g.top] == pytest.approx([c.probability for c in w.top],
                                                               abs=1e-5)
        assert bool(g.error) == bool(w.error)


def test_csv_and_parquet_hold_the_same_rows(scale_bundle, folder, tmp_path):
    pytest.importorskip("pyarrow")
    for name in ("p.csv", "p.parquet"):
        predict_to_file(scale_bundle, [folder], tmp_path / name, recursive=True,
                        progress=False, log=_quiet)
    assert list(read_rows(tmp_path / "p.parquet")) == list(read_rows(tmp_path / "p.csv"))


def test_cli_folder_out_and_printed_lines(scale_bundle, folder, tmp_path):
    out = tmp_path / "cli.csv"
    res = runner.invoke(app, ["predict", str(scale_bundle), str(folder), "--out", str(out),
                              "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["written"] == 2  # top level only without --recursive
    assert "6 sub-folder(s) not searched" in res.output
    res = runner.invoke(app, ["predict", str(scale_bundle), str(folder), "--out", str(out),
                              "--no-progress", "-r", "--resume", "--json"])
    assert json.loads(res.stdout)["written"] == 24 and len(list(read_rows(out))) == 26
    one = next((folder / "brick").iterdir()) if (folder / "brick").exists() else \
        next(p for p in folder.rglob("*.png") if p.parent != folder)
    res = runner.invoke(app, ["predict", str(scale_bundle), str(one), str(folder / "notes.png")])
    assert res.exit_code == 1  # printed mode: any unreadable file -> 1, the others answered
    assert res.output.splitlines()[0].startswith(f"{one}: ")
    assert "error: not an image" in res.output
    res = runner.invoke(app, ["predict", str(scale_bundle), str(one), "--resume"])
    assert res.exit_code == 2 and "need --out" in res.output


KILLS = 3


def test_resume_after_kill_9_writes_each_file_once(scale_bundle, copy_tiles, tmp_path):
    data = copy_tiles(tmp_path / "all", 24)  # 146 files
    out = tmp_path / "preds.csv"
    cmd = [sys.executable, "-m", "sightwise.cli", "predict", str(scale_bundle), str(data),
           "-r", "--out", str(out), "--batch-size", "2", "--threads", "1", "--no-progress",
           "--resume"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    killed = 0
    for _ in range(KILLS):
        before = _lines(out)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        # Kill once it has written a few more batches (fsynced rows; maybe a cut one).
        while proc.poll() is None and _lines(out) < before + 6 and time.monotonic() < deadline:
            time.sleep(0.005)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed += 1
        proc.wait(timeout=60)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = list(read_rows(out))
    paths = [r["path"] for r in rows]
    assert sorted(paths) == sorted(walk_folder(data)) and len(set(paths)) == len(paths)
    assert killed >= 1  # at least one run really died mid-way
    ref = _reference(scale_bundle, list(walk_folder(data)), k=1)
    assert all(r["label"] == ref[r["path"]].label for r in rows)


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0
