"""Figures: each writes a valid PNG; the mistakes grid picks and orders the right tiles."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sightwise.evaluate import figures
from sightwise.evaluate.calibration import softmax


def _assert_png(path, min_size=(100, 100)):
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
        # A blank canvas would mean nothing was drawn.
        assert len(np.unique(np.asarray(im.convert("L")))) > 2
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("normalize", [True, False])
def test_confusion_matrix_png(tmp_path, normalize):
    cm = [[5, 1, 0], [2, 7, 1], [0, 0, 0]]  # a list, and a class with no samples
    out = figures.plot_confusion_matrix(cm, ["cat", "dog", "a very long class name indeed"],
                                        tmp_path / "cm.png", normalize=normalize)
    assert out == tmp_path / "cm.png"
    _assert_png(out)


def test_confusion_matrix_many_classes_and_bad_shape(tmp_path):
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 20, (30, 30))
    _assert_png(figures.plot_confusion_matrix(cm, [f"c{i}" for i in range(30)],
                                              tmp_path / "sub" / "cm30.png"))
    with pytest.raises(ValueError):
        figures.plot_confusion_matrix(cm, ["a", "b"], tmp_path / "bad.png")


def test_reliability_diagram_png(tmp_path):
    rng = np.random.default_rng(1)
    z = rng.normal(scale=3.0, size=(300, 4))
    y = rng.integers(0, 4, 300)
    out = figures.plot_reliability_diagram(softmax(z), softmax(z, 3.0), y,
                                           tmp_path / "rel.png", n_bins=10)
    _assert_png(out, min_size=(500, 250))


def test_images_grid_mixed_inputs(tmp_path):
    rng = np.random.default_rng(2)
    images = [
        rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        rng.random((20, 24)),  # grayscale float
        rng.integers(0, 256, (16, 16, 1), dtype=np.uint8),
        rng.random((32, 32, 3)) * 1.5,  # out-of-range floats get clipped
        rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
    ]
    out = figures.plot_images_grid(images, [f"img {i}" for i in range(5)],
                                   tmp_path / "grid.png", ncols=3)
    _assert_png(out)
    with pytest.raises(ValueError):
        figures.plot_images_grid(images, ["only one"], tmp_path / "bad.png")


def test_mistakes_grid_orders_by_confidence(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    n = 30
    images = rng.integers(0, 256, (n, 24, 24, 3), dtype=np.uint8)
    y_true = rng.integers(0, 3, n)
    y_pred = y_true.copy()
    wrong = np.arange(0, n, 2)  # 15 mistakes
    y_pred[wrong] = (y_true[wrong] + 1) % 3
    conf = rng.uniform(0.4, 1.0, n)
    names = ["cat", "dog", "fox"]

    seen = {}
    real = figures.plot_images_grid

    def spy(imgs, titles, path, ncols=4):
        seen["titles"], seen["images"] = list(titles), list(imgs)
        return real(imgs, titles, path, ncols)

    monkeypatch.setattr(figures, "plot_images_grid", spy)
    out = figures.plot_mistakes_grid(images, y_true, y_pred, conf, names,
                                     tmp_path / "mistakes.png", max_items=8)
    _assert_png(out)
    top = wrong[np.argsort(-conf[wrong])][:8]
    expected = [f"{names[y_true[i]]} → {names[y_pred[i]]} (p={conf[i]:.2f})" for i in top]
    assert seen["titles"] == expected
    assert all(np.array_equal(a, images[i]) for a, i in zip(seen["images"], top, strict=True))


def test_mistakes_grid_without_mistakes(tmp_path):
    images = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    y = np.array([0, 1, 0, 1])
    out = figures.plot_mistakes_grid(images, y, y, np.full(4, 0.9), ["a", "b"],
                                     tmp_path / "none.png")
    _assert_png(out)


def test_evaluate_imports_neither_torch_nor_pyplot():
    code = (
        "import sys\n"
        "import sightwise.evaluate.metrics, sightwise.evaluate.calibration\n"
        "import sightwise.evaluate.figures, sightwise.evaluate.report\n"
        "bad = [m for m in ('torch', 'matplotlib.pyplot') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
