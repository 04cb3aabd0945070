"""`sightwise train` end to end on small generated folders, through the CLI."""

from __future__ import annotations

import csv
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score
from typer.testing import CliRunner

from sightwise.bundle import load_bundle
from sightwise.cli import app
from sightwise.predict import predict_files

runner = CliRunner()


def _train(data: Path, out: Path, *extra: str):
    return runner.invoke(app, ["train", str(data), "--out", str(out), "--no-progress", *extra])


def _test_rows(run: Path) -> list[dict]:
    with open(run / "manifest.csv") as f:
        return [r for r in csv.DictReader(f) if r["split"] == "test"]


@pytest.fixture
def small_run(tmp_path, image_folder_factory):
    data = image_folder_factory(tmp_path / "data", {"apple": 14, "banana": 14, "cherry": 14})
    out = tmp_path / "run"
    res = _train(data, out, "--strategy", "linear-probe", "--img-size", "32")
    assert res.exit_code == 0, res.output
    return data, out


def test_contract_files_and_metrics(small_run):
    data, out = small_run
    m = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "auroc", "ece", "ece_uncalibrated", "n"):
        assert key in m["test"], key
    assert len(m["data"]["manifest_sha256"]) == 64
    assert m["timing"]["train_seconds"] > 0
    assert (out / "report.html").stat().st_size > 10_000
    bundle = load_bundle(out / "bundle")  # verifies every file's sha256
    assert bundle.classes == ["apple", "banana", "cherry"]
    assert bundle.meta.raw["data"]["manifest_sha256"] == m["data"]["manifest_sha256"]
    assert bundle.meta.raw["preprocessing"]["size"] == 32


def test_reported_metrics_match_bundle_predictions(small_run):
    """The metrics in metrics.json are what the saved bundle predicts, scored by sklearn."""
    data, out = small_run
    rows = _test_rows(out)
    m = json.loads((out / "metrics.json").read_text())
    assert m["test"]["n"] == len(rows)
    preds = predict_files(str(out / "bundle"), [str(data / r["path"]) for r in rows], top_k=1)
    y_pred = [p.label for p in preds]
    y_true = [r["label"] for r in rows]
    assert m["test"]["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-9)
    assert m["test"]["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"),
                                                  abs=1e-9)


def test_an_ensemble_run_bundles_one_network_that_predict_reproduces(tmp_path, image_folder_factory):
    """Fine-tuning on small data averages members and mirrored views; the bundle records
    that shape and predicting from it gives the metrics the run reported."""
    data = image_folder_factory(tmp_path / "data", {"a": 10, "b": 10})
    out = tmp_path / "run"
    res = _train(data, out, "--strategy", "scratch", "--members", "2", "--epochs", "1",
                 "--img-size", "32")
    assert res.exit_code == 0, res.output
    model_meta = load_bundle(out / "bundle").meta.raw["model"]
    assert model_meta["members"] == 2 and model_meta["hflip"] is True
    m = json.loads((out / "metrics.json").read_text())
    assert [c["seed"] for c in m["strategy"]["candidates"]["scratch"]["members"]] == [0, 1]
    rows = _test_rows(out)
    preds = predict_files(str(out / "bundle"), [str(data / r["path"]) for r in rows], top_k=1)
    assert m["test"]["accuracy"] == pytest.approx(
        accuracy_score([r["label"] for r in rows], [p.label for p in preds]), abs=1e-9)


def test_same_seed_same_split_and_metrics(tmp_path, image_folder_factory):
    """Same seeds, same split and metrics; another training seed keeps the split (so the
    versions are comparable), another split seed moves it."""
    data = image_folder_factory(tmp_path / "data", {"a": 10, "b": 10, "c": 10})
    runs = []
    for name, seed, split_seed in (("r1", "0", "0"), ("r2", "0", "0"), ("r3", "1", "0"),
                                   ("r4", "0", "1")):
        res = _train(data, tmp_path / name, "--strategy", "linear-probe", "--img-size", "32",
                     "--seed", seed, "--split-seed", split_seed)
        assert res.exit_code == 0, res.output
        runs.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    assert runs[0]["data"]["manifest_sha256"] == runs[1]["data"]["manifest_sha256"]
    assert runs[0]["data"]["manifest_sha256"] == runs[2]["data"]["manifest_sha256"]
    assert runs[0]["data"]["manifest_sha256"] != runs[3]["data"]["manifest_sha256"]
    assert runs[0]["test"]["accuracy"] == runs[1]["test"]["accuracy"]
    assert runs[0]["test"]["log_loss"] == pytest.approx(runs[1]["test"]["log_loss"], abs=1e-6)


def _png_bomb_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height: a few bytes on disk, gigabytes decoded."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    raw = zlib.compress(b"\x00" * 64)
    idat = b"IDAT" + raw
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + struct.pack(">I", len(raw)) + idat
            + struct.pack(">I", zlib.crc32(idat)) + b"\x00\x00\x00\x00IEND\xaeB`\x82")


def _write_odd_files(folder: Path) -> tuple[set[str], set[str]]:
    """The issue's list: four bad files and three odd-but-valid ones."""
    rng = np.random.default_rng(0)
    rgb = (rng.random((40, 40, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is not an image\n")
    (folder / "bomb.png").write_bytes(_png_bomb_header(30000, 30000))
    Image.fromarray((rng.random((40, 40)) * 65535).astype(np.uint16)).save(folder / "deep16.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", "JPEG")
    rgba = np.dstack([rgb, np.full((40, 40), 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    return {"truncated.jpg", "empty.jpg", "notes.jpg", "bomb.png"}, {
        "deep16.png", "cmyk.jpg", "alpha.png"}


def test_bad_files_are_reported_and_training_finishes(tmp_path, image_folder_factory):
    data = image_folder_factory(tmp_path / "data", {"a": 12, "b": 12})
    bad, odd = _write_odd_files(data / "a")
    out = tmp_path / "run"
    res = _train(data, out, "--strategy", "linear-probe", "--img-size", "32")
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    skipped = {Path(s["path"]).name: s["reason"] for s in m["data"]["skipped"]}
    assert set(skipped) == bad
    assert "truncated" in skipped["truncated.jpg"]
    assert "empty" in skipped["empty.jpg"]
    assert "not an image" in skipped["notes.jpg"]
    assert "decompression bomb" in skipped["bomb.png"]
    for name in bad:  # each bad file is named, with its reason, in the output
        assert name in res.output
    used = {Path(r[0]).name for r in csv.reader(open(out / "manifest.csv"))}
    assert odd <= used


@pytest.mark.parametrize("classes", [{"only": 6}, {"a": 6, "b": 1}])
def test_unusable_dataset_exits_2_with_one_line(tmp_path, image_folder_factory, classes):
    data = image_folder_factory(tmp_path / "data", classes)
    res = _train(data, tmp_path / "run", "--strategy", "linear-probe", "--img-size", "32")
    assert res.exit_code == 2
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1
    assert "2" in errors[0]


def test_missing_data_and_bad_option_exit_2(tmp_path):
    assert _train(tmp_path / "nope", tmp_path / "run").exit_code == 2
    res = _train(tmp_path, tmp_path / "run", "--strategy", "magic")
    assert res.exit_code == 2


def test_predict_cli_json_and_per_file_errors(small_run, tmp_path):
    data, out = small_run
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    good = next((data / "banana").iterdir())
    res = runner.invoke(app, ["predict", str(out / "bundle"), str(good), str(bad), "--json"])
    assert res.exit_code == 1  # one file failed; the other was still answered
    answer = json.loads(res.stdout)
    assert answer[0]["predictions"][0]["label"] == "banana"
    assert sum(p["probability"] for p in answer[0]["predictions"]) <= 1.0 + 1e-6
    assert answer[1]["error"] and not answer[1]["predictions"]


def test_an_existing_bundle_is_not_replaced_without_overwrite(small_run, tmp_path):
    data, out = small_run
    before = (out / "bundle" / "bundle.json").read_bytes()
    res = _train(data, out, "--strategy", "linear-probe", "--img-size", "32")
    assert res.exit_code == 2 and "already exists; pass --overwrite" in res.output
    assert (out / "bundle" / "bundle.json").read_bytes() == before


def test_a_failed_run_leaves_no_empty_out_folder(tmp_path):
    (tmp_path / "data" / "only").mkdir(parents=True)
    out = tmp_path / "never"
    res = _train(tmp_path / "data", out)
    assert res.exit_code == 2 and not out.exists()


def test_a_trained_bundle_is_exported_and_predicts_without_torch_path(small_run):
    """train exports the fp32 graph with its parity check: the bundle says so and the
    runtime may run it."""
    _, out = small_run
    bundle = load_bundle(out / "bundle")
    assert bundle.graph().name == "model.onnx" and bundle.meta.export.fp32_passed
    m = json.loads((out / "metrics.json").read_text())
    assert m["export"]["fp32_passed"] is True and m["export"]["n"] == m["test"]["n"]
