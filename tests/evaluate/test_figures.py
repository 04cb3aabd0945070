"""Figures: each writes a valid PNG; the mistakes grid picks and orders the right tiles;
long class names are wrapped, never cut; curves plot the history they are given; heat-map
pairs carry their legend."""

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
    expected = [f"true: {names[y_true[i]]}\npredicted: {names[y_pred[i]]} (p={conf[i]:.2f})"
                for i in top]
    assert seen["titles"] == expected
    assert all(np.array_equal(a, images[i]) for a, i in zip(seen["images"], top, strict=True))


def test_mistakes_grid_without_mistakes_draws_nothing(tmp_path):
    images = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    y = np.array([0, 1, 0, 1])
    out = figures.plot_mistakes_grid(images, y, y, np.full(4, 0.9), ["a", "b"],
                                     tmp_path / "none.png")
    assert out is None and list(tmp_path.iterdir()) == []  # the report says it in words


LONG = "Extremely_long_class_name_for_a_very_specific_defect_type_60"
LONG_TWIN = "Extremely_long_class_name_for_a_very_specific_defect_type_61"  # same first 58


@pytest.mark.parametrize("text, width", [
    (LONG, 18), (LONG, 7), ("a" * 62, 18), ("Red Delicious apples from the organic shelf", 12),
    ("pepper/green-bell pepper_2", 9), ("short", 18), ("x", 1)])
def test_wrap_label_keeps_every_character_within_the_width(text, width):
    lines = figures.wrap_label(text, width, max_lines=100).split("\n")
    assert all(0 < len(line) <= width for line in lines)
    # Breaks fall after a separator or inside an over-long word; only spaces at a break go.
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")


def test_wrap_label_caps_the_lines_with_an_ellipsis():
    out = figures.wrap_label("a" * 100, 10, max_lines=3).split("\n")
    assert len(out) == 3 and out[-1].endswith(" …") and all(len(x) <= 10 for x in out)


def _capture(monkeypatch):
    """Keep the Figure each plot function saves, to read back what it drew."""
    seen = []
    real = figures.save_figure

    def keep(fig, path):
        seen.append(fig)
        return real(fig, path)

    monkeypatch.setattr(figures, "save_figure", keep)
    return seen


def test_confusion_matrix_wraps_long_names_instead_of_cutting_them(tmp_path, monkeypatch):
    seen = _capture(monkeypatch)
    names = [LONG, LONG_TWIN, "ok"]
    _assert_png(figures.plot_confusion_matrix(np.eye(3, dtype=int) * 4, names,
                                              tmp_path / "cm.png"))
    ax = seen[0].axes[0]
    for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
        shown = [t.get_text() for t in ticks]
        assert [s.replace("\n", "") for s in shown] == names  # whole, and still different
        assert max(len(line) for s in shown for line in s.split("\n")) <= 18


def test_images_grid_wraps_long_titles(tmp_path, monkeypatch):
    seen = _capture(monkeypatch)
    title = f"true: {LONG}\npredicted: ok (p=0.91)"
    figures.plot_images_grid([np.zeros((8, 8, 3), np.uint8)], [title], tmp_path / "g.png")
    shown = seen[0].axes[0].get_title()
    assert shown.replace("\n", "").replace(" ", "") == title.replace("\n", "").replace(" ", "")
    assert max(len(line) for line in shown.split("\n")) <= 34


def test_training_curves_plot_the_history_per_member(tmp_path, monkeypatch):
    seen = _capture(monkeypatch)
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_accuracy": acc,
                "member": m}
               for m, accs in ((1, [0.5, 0.8, 0.7]), (2, [0.6, 0.6, 0.9]))
               for e, acc in enumerate(accs, start=1)]
    _assert_png(figures.plot_training_curves(history, tmp_path / "curves.png"), (600, 250))
    loss_ax, acc_ax = seen[0].axes[:2]
    train_1 = next(ln for ln in loss_ax.lines if ln.get_label() == "member 1 train")
    np.testing.assert_allclose(train_1.get_xydata(), [[1, 1.0], [2, 0.5], [3, 1 / 3]])
    val_2 = next(ln for ln in acc_ax.lines if ln.get_label() == "member 2")
    np.testing.assert_allclose(val_2.get_ydata(), [0.6, 0.6, 0.9])
    stars = [ln.get_xydata().tolist() for ln in acc_ax.lines if ln.get_marker() == "*"]
    assert stars == [[[2.0, 0.8]], [[3.0, 0.9]]]  # each member's best epoch
    with pytest.raises(ValueError):
        figures.plot_training_curves([], tmp_path / "none.png")


def test_training_curves_of_one_model_without_member_keys(tmp_path):
    history = [{"epoch": 1, "train_loss": 0.9, "val_loss": 0.8, "val_accuracy": 0.7}]
    _assert_png(figures.plot_training_curves(history, tmp_path / "one.png"), (600, 250))


def test_heatmap_pairs_show_image_overlay_titles_and_legend(tmp_path, monkeypatch):
    seen = _capture(monkeypatch)
    rng = np.random.default_rng(4)
    originals = [rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(3)]
    overlays = [np.full((24, 24, 3), 200, np.uint8) for _ in range(3)]
    legend = np.stack([np.arange(256), np.zeros(256), 255 - np.arange(256)], 1).astype(np.uint8)
    titles = ["ok (correct, p=0.99)", f"MISTAKE: true {LONG}\npredicted ok (p=0.51)", "short"]
    out = figures.plot_heatmap_pairs(originals, overlays, titles, tmp_path / "pairs.png",
                                     legend_colors=legend, marked=[False, True, False])
    _assert_png(out, (500, 300))
    fig = seen[0]
    shown = {}
    for row in fig.subfigs[:-1]:
        for pair in row.subfigs:
            axes = pair.axes
            if axes and axes[0].images:
                shown[pair._suptitle.get_text().strip()] = (
                    axes[0].images[0].get_array(), axes[1].images[0].get_array(),
                    pair._suptitle.get_color())
    assert len(shown) == 3
    def squash(t):
        return t.replace("\n", "").replace(" ", "")

    for (shown_title, (orig, over, colour)), title, o, v, red in zip(
            shown.items(), titles, originals, overlays, (False, True, False), strict=True):
        assert squash(shown_title) == squash(title)  # wrapped, not cut
        np.testing.assert_array_equal(orig, o)  # the original beside ...
        np.testing.assert_array_equal(over, v)  # ... its overlay
        assert (colour == "#cf222e") == red
    # The legend's colour bar uses exactly the colours it was given, low to high.
    from matplotlib.collections import QuadMesh

    bar = fig.subfigs[-1].axes[0]
    (mesh,) = [c for c in bar.collections if isinstance(c, QuadMesh)]  # the bar's colours
    cmap = mesh.get_cmap()
    np.testing.assert_allclose(cmap(np.linspace(0, 1, 256))[:, :3] * 255, legend, atol=1e-6)
    png = np.asarray(Image.open(out).convert("RGB")).reshape(-1, 3)
    for colour in (legend[0], legend[255]):  # both ends are painted
        assert (np.abs(png.astype(int) - colour).sum(1) <= 6).any()


def test_evaluate_imports_neither_torch_nor_pyplot():
    code = (
        "import sys\n"
        "import sightwise.evaluate.metrics, sightwise.evaluate.calibration\n"
        "import sightwise.evaluate.figures, sightwise.evaluate.report\n"
        "bad = [m for m in ('torch', 'matplotlib.pyplot') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
