"""fit -> bundle -> torch-free score -> evaluate, on generated textures with a planted blob."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sightwise.anomaly.cli import inspect_app
from sightwise.anomaly.detector import Detector
from sightwise.bundle import load_bundle
from sightwise.heatmap import JET


def test_bundle_is_an_anomaly_bundle(detector_dir):
    b = load_bundle(detector_dir)  # verifies every file's sha256
    assert b.task == "anomaly" and b.preprocessing.size == 64
    assert {"extractor.onnx", "memory.npy", "bundle.json"} <= {p.name for p in detector_dir.iterdir()}
    assert set(b.meta.raw["thresholds"]) == {"far", "f1"} and b.meta.raw["threshold_mode"] == "far"
    m = b.meta.metrics
    assert m["memory_bank"] == pytest.approx(0.5 * m["patches_total"], abs=1)
    with open(detector_dir / "memory.npy", "rb") as f:
        assert np.load(f, allow_pickle=False).dtype == np.float32


def test_onnx_extractor_matches_torch(detector_dir, inspection_data):
    import torch

    from sightwise.anomaly.extractor import build_extractor, torch_features
    from sightwise.anomaly.fit import load_batch

    torch.set_num_threads(1)
    det = Detector(detector_dir, threads=1)
    files = sorted(inspection_data["test_good"].iterdir())[:3]
    x, _, _ = load_batch(files, det.pre)
    onnx_f = det.session.run(["features"], {"image": x})[0]
    ref = torch_features(build_extractor(), x)
    assert onnx_f.shape == (3, 472, 8, 8)
    np.testing.assert_allclose(onnx_f, ref, atol=1e-4, rtol=0)


def test_reflect_padding_keeps_border_patches_like_the_interior():
    """On a featureless image every patch is the same part: the backbone's zero padding makes
    the border patches differ from the centre; reflecting the image first removes most of it."""
    import torch

    from sightwise.anomaly.extractor import build_extractor, torch_features

    torch.set_num_threads(1)
    x = np.full((1, 3, 96, 96), 0.3, np.float32)

    def border_deviation(pad):
        f = torch_features(build_extractor(pad=pad), x)[0]
        centre = f[:, 6, 6]
        dist = np.linalg.norm(f - centre[:, None, None], axis=0)
        return float(np.r_[dist[0], dist[-1], dist[:, 0], dist[:, -1]].mean())

    assert torch_features(build_extractor(pad=32), x).shape == (1, 472, 12, 12)  # image grid kept
    assert border_deviation(32) < 0.5 * border_deviation(0)
    with pytest.raises(ValueError, match="multiple of 8"):
        build_extractor(pad=12)


def test_heatmap_is_hotter_on_the_planted_defect(detector_dir, inspection_data, planted_mask):
    det = Detector(detector_dir, threads=1)
    defect = sorted((inspection_data["defect"] / "blob").iterdir())[0]
    image = Image.open(defect)
    r = det.inspect([image])[0]
    assert r.verdict == "defect"
    heat = det.pixel_map(r.patch_map, image.size)  # the image's own part, stretched to 64 x 64
    small = np.asarray(Image.fromarray(planted_mask).resize((64, 64), Image.Resampling.NEAREST))
    assert heat[small].mean() > 1.5 * heat[~small].mean()  # 8x8 patch grid: coarse
    over = det.overlay(image, r.patch_map)
    assert over.size == image.size  # the input's own size (72 x 64), not the network's
    # On a black canvas the overlay is half the colour; read the colour back as its
    # position on the jet scale (0 cold .. 255 hot).
    dark = np.asarray(det.overlay(Image.new("RGB", image.size), r.patch_map, alpha=1.0), np.float32)
    level = np.abs(dark[:, :, None, :] - JET[None, None].astype(np.float32)).sum(-1).argmin(-1)
    assert level[planted_mask].mean() > level[~planted_mask].mean() + 40


SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "timm"):
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, Block())
    sys.modules["torch"] = None
    from sightwise.anomaly.detector import Detector
    from sightwise.anomaly.scoring import score_folder
    rows = score_folder(Detector(sys.argv[1], threads=1), sys.argv[2], sys.argv[3])
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm") and sys.modules[m])
    print(json.dumps({"rows": rows, "loaded": loaded}))
""")


def test_score_runs_without_torch(detector_dir, inspection_data, tmp_path):
    images = inspection_data["defect"].parent  # good + defect + masks trees
    (tmp_path / "in").mkdir()
    for f in [*sorted(inspection_data["test_good"].iterdir())[:2],
              *sorted((inspection_data["defect"] / "blob").iterdir())[:2]]:
        (tmp_path / "in" / f.name).write_bytes(f.read_bytes())
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image")
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(detector_dir), str(tmp_path / "in"),
                          str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["loaded"] == [] and images.is_dir()
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in out["rows"]}
    assert rows["broken.png"]["error"] and rows["broken.png"]["score"] is None
    assert [rows[n]["verdict"] for n in ("d000.png", "d001.png")] == ["defect", "defect"]
    assert rows["d000.png"]["score"] > max(rows["t000.png"]["score"], rows["t001.png"]["score"])
    png = Image.open(tmp_path / "out" / rows["d000.png"]["overlay"])
    assert png.size == (72, 64)
    summary = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert summary["n"] == 5 and summary["n_error"] == 1
    assert (tmp_path / "out" / "scores.csv").read_text().count("\n") == 6


def test_evaluate_cli_json(detector_dir, inspection_data, tmp_path):
    report = tmp_path / "report.html"
    res = CliRunner().invoke(inspect_app, [
        "evaluate", str(detector_dir), "--good", str(inspection_data["test_good"]),
        "--defect", str(inspection_data["defect"]), "--masks", str(inspection_data["masks"]),
        "--report", str(report), "--json", "--threads", "1"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert set(out) == {"image_auroc", "pixel_auroc", "pro", "false_alarm_rate", "f1",
                        "n_good", "n_defect"}
    assert (out["n_good"], out["n_defect"]) == (6, 6)
    assert out["image_auroc"] == 1.0 and out["pixel_auroc"] > 0.9 and out["pro"] > 0.5
    assert report.is_file() and "Lowest-scoring defects" in report.read_text()
    load_bundle(detector_dir)  # evaluate wrote nothing into the bundle


def test_inspect_route(detector_dir, inspection_data):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from sightwise.serve.inspect_routes import add_inspect_routes

    app = FastAPI()
    add_inspect_routes(app, detector_dir, threads=1)
    client = TestClient(app)
    defect = sorted((inspection_data["defect"] / "blob").iterdir())[0].read_bytes()
    r = client.post("/v1/inspect", content=defect)
    assert r.status_code == 200 and r.json()["verdict"] == "defect"
    r = client.post("/v1/inspect?format=png", content=defect)
    assert r.headers["content-type"] == "image/png" and r.headers["x-verdict"] == "defect"
    assert float(r.headers["x-threshold"]) == pytest.approx(Detector(detector_dir).threshold, rel=1e-5)
    assert client.post("/v1/inspect", content=b"junk").status_code == 415  # as /v1/predict


def test_content_grid_marks_the_patches_on_the_image():
    from sightwise.anomaly.detector import content_grid
    from sightwise.data.preprocess import Preprocessing

    pre = Preprocessing(size=64, resize="letterbox")
    # 128 x 64 image -> 64 x 32 band in rows 16..47; 8 x 8 grid of 8-px cells
    grid = content_grid(pre, [(128, 64), (64, 64)], (8, 8))
    assert grid[0].sum(axis=1).tolist() == [0, 0, 8, 8, 8, 8, 0, 0]
    assert grid[1].all()
    assert content_grid(Preprocessing(size=64), [(128, 64)], (8, 8)).all()  # stretch: all


def test_pixel_map_is_the_images_own_part_of_the_input(detector_dir):
    from sightwise.anomaly.detector import content_grid, smooth_map

    det = Detector(detector_dir, threads=1)
    assert det.pre.resize == "letterbox"  # the default for `inspect fit`
    assert det.pre.content_box(72, 64) == (0, 3, 64, 57)
    content = content_grid(det.pre, [(72, 64)], (8, 8))[0]
    assert content.sum(axis=1).tolist() == [8, 8, 8, 8, 8, 8, 8, 0]  # row 7 (centre y 60) is fill
    # The fill's scores (never banked, often high) do not leak into the image's edge
    patch_map = np.where(content, 1.0, 100.0).astype(np.float32)
    np.testing.assert_allclose(det.pixel_map(patch_map, (72, 64)), 1.0, rtol=1e-5)
    assert smooth_map(patch_map, 64)[59].mean() > 5  # as it would without the fill
    # a hot cell at the image's top-left lands at the top-left of the stretched-back map
    hot = np.zeros((8, 8), np.float32)
    hot[1, 0] = 1.0
    heat = det.pixel_map(hot, (72, 64))
    assert np.unravel_index(heat.argmax(), heat.shape) < (12, 12)
    overlay = det.overlay(Image.new("RGB", (72, 64)), hot)
    assert overlay.size == (72, 64)
    # a square image needs no crop: the map at the input's resolution
    np.testing.assert_allclose(det.pixel_map(hot, (50, 50)), smooth_map(hot, 64))


def test_an_image_thinner_than_a_patch_keeps_the_row_it_runs_through():
    from sightwise.anomaly.detector import content_grid
    from sightwise.data.preprocess import Preprocessing

    pre = Preprocessing(size=224, resize="letterbox")
    for size in [(1000, 1), (5000, 30), (8960, 224), (1, 1000)]:
        grid = content_grid(pre, [size], (28, 28))[0]
        lines = grid.sum(axis=0 if size[1] > size[0] else 1)
        assert grid.sum() == 28 and lines.max() == 28  # one full row (column)


def test_fit_rejects_a_resize_that_would_hide_part_of_the_image(inspection_data, tmp_path):
    from sightwise.anomaly.fit import FitConfig, fit_detector

    with pytest.raises(ValueError, match="letterbox"):
        fit_detector(inspection_data["good"], tmp_path / "d", FitConfig(resize="center-crop"))


def test_evaluate_breaks_down_by_class_and_within_defect_images(detector_dir, inspection_data,
                                                                 tmp_path):
    from sightwise.anomaly.evaluate import evaluate_detector

    report = tmp_path / "report.html"
    res = evaluate_detector(detector_dir, inspection_data["test_good"], inspection_data["defect"],
                            inspection_data["masks"], report=report, threads=1)
    blob = res["per_class"]["blob"]
    assert list(res["per_class"]) == ["blob"] and blob["n"] == 6
    # One class: its row is the pooled figure restricted to itself, i.e. the pooled figure.
    assert blob["image_auroc"] == pytest.approx(res["image_auroc"])
    assert blob["pixel_auroc"] == pytest.approx(res["pixel_auroc"])
    assert blob["recall"] == pytest.approx(res["recall"])
    # Within the defect images the planted blob still outscores the rest of the image.
    assert 0.8 < res["pixel_auroc_defect_images"] <= 1.0
    assert 0.8 < res["pixel_auroc_within_image"] <= 1.0
    assert blob["pixel_auroc_within_image"] == pytest.approx(res["pixel_auroc_within_image"])
    assert blob["defect_pixel_share"] == pytest.approx(1.0)  # the only class holds every marked pixel
    assert "By defect class" in report.read_text()
