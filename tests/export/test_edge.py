"""The edge package: its files, its resize against sightwise's, and its answers against the
runtime's from a virtual environment holding only onnxruntime, numpy and Pillow."""

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sightwise.bundle import load_bundle
from sightwise.data.preprocess import Preprocessing, normalize, resize_rgb
from sightwise.errors import DataError
from sightwise.export import edge as edge_module


def _edge_module(folder: Path):
    spec = importlib.util.spec_from_file_location("edge_predict_under_test", folder / "predict.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_package_files(exported):
    bundle_path, edge = exported
    bundle = load_bundle(bundle_path)
    assert sorted(p.name for p in edge.iterdir()) == [
        "README.md", "labels.json", "model.onnx", "predict.py", "preprocessing.json"]
    assert json.loads((edge / "labels.json").read_text()) == bundle.classes
    pre = json.loads((edge / "preprocessing.json").read_text())
    assert Preprocessing.from_dict(pre) == bundle.preprocessing
    assert pre["temperature"] == bundle.temperature and pre["precision"] == "int8"
    # int8 passed its gate, so the int8 graph ships
    assert (edge / "model.onnx").read_bytes() == bundle.file("model.int8.onnx").read_bytes()
    assert "pip install onnxruntime numpy pillow" in (edge / "README.md").read_text()
    tree = ast.parse((edge / "predict.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported - set(sys.stdlib_module_names) - {"__future__"} == {"numpy", "onnxruntime", "PIL"}


@pytest.mark.parametrize("resize", ["stretch", "center-crop", "letterbox"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("shape", [(50, 80), (81, 33), (64, 64), (7, 300)])
def test_edge_resize_and_normalise_equal_sightwise(exported, resize, interpolation, shape):
    mod = _edge_module(exported[1])
    pre = Preprocessing(size=24, resize=resize, interpolation=interpolation,
                        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    rng = np.random.default_rng(sum(shape))
    img = Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
    ours = resize_rgb(img, pre)
    theirs = mod.resize_rgb(img, pre.to_dict())
    np.testing.assert_array_equal(theirs, ours)
    np.testing.assert_array_equal(mod.normalize(theirs[None], pre.to_dict()),
                                  normalize(ours[None], pre))


def test_edge_rgb_conversion_equals_sightwise(exported):
    from sightwise.data.decode import to_rgb

    mod = _edge_module(exported[1])
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (9, 7, 4), dtype=np.uint8))
    grey16 = Image.fromarray(rng.integers(0, 65535, (9, 7), dtype=np.uint16))
    for img in (rgba, grey16, rgba.convert("L"), rgba.convert("P")):
        np.testing.assert_array_equal(np.asarray(mod.to_rgb(img)), np.asarray(to_rgb(img)))


def test_refuses_to_replace_a_folder_that_is_not_a_package(exported, tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="not an edge package"):
        edge_module.write_edge_package(load_bundle(exported[0]), tmp_path, model_name="model.onnx",
                                       parity={}, opset=17)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def _images(exported, tmp_path) -> list[str]:
    bundle = load_bundle(exported[0])
    root = Path(bundle.meta.raw["data"]["root"])
    paths = [str(root / c / f"{c}_00{i}.png") for c in bundle.classes[:3] for i in range(2)]
    odd = tmp_path / "odd.jpg"
    Image.open(paths[0]).convert("L").resize((90, 51)).save(odd)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    return [*paths, str(odd), str(bad)]


def _compare_with_runtime(exported, results: list[dict], paths: list[str]) -> None:
    from sightwise.runtime import Predictor

    want = Predictor(exported[0], int8=True).predict_paths(paths, top_k=3)
    assert [r["image"] for r in results] == paths
    for got, ref in zip(results, want, strict=True):
        assert (got["error"] is None) == (ref.error is None), (got, ref)
        assert [p["label"] for p in got["predictions"]] == [c.label for c in ref.top]
        np.testing.assert_allclose([p["probability"] for p in got["predictions"]],
                                   [c.probability for c in ref.top], rtol=1e-5, atol=1e-6)


def test_edge_predictions_equal_the_runtime_in_process(exported, tmp_path):
    paths = _images(exported, tmp_path)
    _compare_with_runtime(exported, _edge_module(exported[1]).predict(paths, top_k=3), paths)


@pytest.mark.slow
def test_edge_package_runs_in_a_venv_with_only_three_packages(exported, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "onnxruntime", "numpy", "pillow"], check=True, timeout=600)
    probe = subprocess.run([str(py), "-c", "import torch"], capture_output=True)
    assert probe.returncode != 0  # the venv really lacks torch (and sightwise)
    paths = _images(exported, tmp_path)
    run = subprocess.run([str(py), str(exported[1] / "predict.py"), *paths, "--json"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 1, run.stderr  # one unreadable image -> exit 1, others answered
    _compare_with_runtime(exported, json.loads(run.stdout), paths)
