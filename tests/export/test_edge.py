"""The edge package: its files; its decoding, resize, softmax and top-k against the library's
on edge cases (dim 16-bit, float, palette, CMYK, alpha, EXIF rotation); and its answers
against the runtime's from an interpreter that can import only onnxruntime, numpy and Pillow."""

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sightwise import core
from sightwise.bundle import load_bundle
from sightwise.data.decode import decode_image, to_rgb
from sightwise.data.preprocess import Preprocessing, normalize, resize_rgb
from sightwise.errors import DataError
from sightwise.export import edge as edge_module

EDGE_SOURCE = Path(edge_module.__file__).with_name("edge_predict.py")


def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location("edge_predict_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _edge_module(folder: Path):
    return _load_script(folder / "predict.py")


@pytest.fixture(scope="module")
def edge_script():
    """The script's source (test_package_files checks the package holds this very file)."""
    return _load_script(EDGE_SOURCE)


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
    assert (edge / "predict.py").read_bytes() == EDGE_SOURCE.read_bytes()
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


def _write_case(name: str, folder: Path) -> Path:
    """One image file per edge case the two decoders must agree on."""
    rng = np.random.default_rng(sum(map(ord, name)))
    rgb = Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8))
    path = folder / f"{name}.png"
    if name == "dim-16bit":  # a dark 16-bit scan: values that are dim in 16 bits stay dim
        Image.fromarray(np.tile(np.array([0, 100, 200, 255], np.uint16), (3, 1))).save(path)
    elif name == "full-16bit":
        Image.fromarray(rng.integers(0, 65536, (9, 7), dtype=np.uint16)).save(path)
    elif name in ("float-unit", "float-wide"):  # mode F; [0, 1] or values above 1
        top = 1.0 if name == "float-unit" else 300.0
        values = np.r_[0.0, 0.25, 0.5, 1.0, rng.uniform(0, top, 24)].astype(np.float32)
        path = folder / f"{name}.tif"
        Image.fromarray(values.reshape(4, 7) * np.float32(top if top > 1 else 1)).save(path)
    elif name == "palette":
        rgb.quantize(16).save(path)
    elif name == "palette-transparent":
        rgb.quantize(16).save(path, transparency=3)
    elif name == "cmyk":
        path = folder / f"{name}.jpg"
        rgb.convert("CMYK").save(path, "JPEG", quality=95)
    elif name == "rgba":
        Image.fromarray(rng.integers(0, 256, (12, 20, 4), dtype=np.uint8)).save(path)
    elif name == "la":
        Image.fromarray(rng.integers(0, 256, (12, 20, 2), dtype=np.uint8), "LA").save(path)
    elif name == "bilevel":
        rgb.convert("1").save(path)
    elif name == "exif-rotated-jpeg":  # orientation 6: the camera was turned 90 degrees
        path = folder / f"{name}.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6
        rgb.save(path, "JPEG", exif=exif, quality=95)
    else:
        raise AssertionError(name)
    return path


EDGE_CASES = ["dim-16bit", "full-16bit", "float-unit", "float-wide", "palette",
              "palette-transparent", "cmyk", "rgba", "la", "bilevel", "exif-rotated-jpeg"]


@pytest.mark.parametrize("case", EDGE_CASES)
def test_edge_decoding_and_preprocessing_equal_the_library(edge_script, tmp_path, case):
    path = _write_case(case, tmp_path)
    ours = decode_image(path)
    theirs = edge_script.load_image(str(path))
    assert theirs.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(theirs), np.asarray(ours))
    # ... and the network input built from it, as the runtime builds it (Predictor.preprocess)
    pre = Preprocessing(size=16, resize="letterbox", interpolation="bicubic",
                        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    want = normalize(np.stack([resize_rgb(to_rgb(ours), pre)]), pre)
    got = edge_script.normalize(edge_script.resize_rgb(theirs, pre.to_dict())[None], pre.to_dict())
    np.testing.assert_array_equal(got, want)


def test_edge_cases_decode_to_the_hand_worked_pixels(edge_script, tmp_path):
    """The cases above against values worked out by hand, so both decoders cannot be wrong
    together: 16-bit values scale from 65535 (100 -> 100/65535*255 = 0.39 -> 0), float images
    from [0, 1] (0.25 -> 63.75 -> 64), EXIF orientation 6 turns 20x12 into 12x20."""
    for decode in (decode_image, lambda p: edge_script.load_image(str(p))):
        dim = np.asarray(decode(_write_case("dim-16bit", tmp_path)))
        assert dim[0, :, 0].tolist() == [0, 0, 1, 1]
        unit = np.asarray(decode(_write_case("float-unit", tmp_path)))
        assert unit[0, :4, 0].tolist() == [0, 64, 128, 255]
        wide = np.asarray(decode(_write_case("float-wide", tmp_path)))
        assert wide[0, :4, 0].tolist() == [0, 75, 150, 255]  # 300 * 0.25 = 75; above 255 clips
        assert decode(_write_case("exif-rotated-jpeg", tmp_path)).size == (12, 20)
        see_through = np.asarray(decode(_write_case("palette-transparent", tmp_path)))
        assert (see_through == 255).all(axis=2).any()  # palette entry 3 is white now


@pytest.mark.parametrize("array, mode", [
    (np.array([[0, 100, 70000, -5]], np.int32), "I"),  # 32-bit integers: the 16-bit range
    (np.array([[0, 65535, 32768, 1]], np.uint16), "I;16"),
    (np.array([[0.0, 0.5, 1.0, -0.2]], np.float32), "F"),
    (np.array([[0.0, 2.0, 255.0, 512.0]], np.float32), "F"),
])
def test_edge_to_rgb_equals_the_library_in_memory(edge_script, array, mode):
    img = Image.fromarray(array)
    assert img.mode == mode
    np.testing.assert_array_equal(np.asarray(edge_script.to_rgb(img)), np.asarray(to_rgb(img)))


def test_edge_softmax_and_top_k_equal_sightwise_core(edge_script):
    rng = np.random.default_rng(0)
    logits = np.vstack([rng.normal(0, 5, (20, 7)), np.full((1, 7), 3.0),
                        [[1e4, -1e4, 0, 0, 0, 0, 0]]]).astype(np.float32)
    for t in (0.3, 1.0, 2.7):
        got = edge_script.softmax(logits, t)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, core.softmax(logits, t))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            edge_script.softmax(logits, bad)
    ties = np.array([0.1, 0.3, 0.3, 0.05, 0.3], np.float32)
    for k in (-2, 0, 1, 2, 3, 5, 9):
        assert edge_script.top_k_indices(ties, k).tolist() == core.top_k_indices(ties, k).tolist()
    assert edge_script.top_k_indices(ties, 3).tolist() == [1, 2, 4]  # ties: lower index first
    assert edge_script.top_k_indices(ties, 0).tolist() == [1]


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


def _only_three_packages(folder: Path) -> Path:
    """A folder holding links to onnxruntime, numpy and Pillow and nothing else; run with
    `python -S` and PYTHONPATH=folder, an interpreter can import those and the standard
    library only (no site-packages, no sightwise, no torch), and nothing is downloaded."""
    folder.mkdir()
    import numpy
    import onnxruntime
    import PIL

    for mod in (numpy, onnxruntime, PIL):
        pkg = Path(mod.__file__).parent
        (folder / pkg.name).symlink_to(pkg, target_is_directory=True)
        libs = pkg.with_name(("pillow" if pkg.name == "PIL" else pkg.name) + ".libs")
        if libs.is_dir():  # the wheels' bundled shared libraries
            (folder / libs.name).symlink_to(libs, target_is_directory=True)
    return folder


def test_edge_package_runs_with_only_three_packages(exported, tmp_path):
    site = _only_three_packages(tmp_path / "site")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    probe = subprocess.run([sys.executable, "-S", "-c", "import torch"], env=env,
                           capture_output=True, timeout=60)
    assert probe.returncode != 0  # the interpreter really lacks torch
    probe = subprocess.run([sys.executable, "-S", "-c", "import sightwise"], env=env,
                           capture_output=True, timeout=60)
    assert probe.returncode != 0  # ... and sightwise
    paths = _images(exported, tmp_path)
    run = subprocess.run([sys.executable, "-S", str(exported[1] / "predict.py"), *paths, "--json"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert run.returncode == 1, run.stderr  # one unreadable image -> exit 1, others answered
    _compare_with_runtime(exported, json.loads(run.stdout), paths)
