"""The training report as train writes it: split sizes, training curves (or why there are
none), mistakes said in words when there are none, and CAM overlays beside their images."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from sightwise.evaluate.report import Note
from sightwise.heatmap import overlay_cam
from sightwise.train.evaluation import _training_curves
from sightwise.train.overlays import example_title, heat_legend_colors, pick_examples


def _metrics(history, chosen):
    return {"history": history, "strategy": {"chosen": chosen}}


def _history(members=1, epochs=3):
    return [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "val_accuracy": 0.5 + e / 10,
             "seconds": 1.0, "member": m} for m in range(1, members + 1)
            for e in range(1, epochs + 1)]


def test_a_linear_probe_has_no_curve_and_the_report_says_why(tmp_path):
    ((caption, note),) = _training_curves(tmp_path, _metrics([], "linear-probe")).items()
    assert caption == "Training curves" and isinstance(note, Note)
    assert "no training curve" in note.text and "linear probe" in note.text
    assert not (tmp_path / "figures").exists()


@pytest.mark.parametrize("chosen, members, words", [
    ("finetune", 3, ["fine-tuning, 3 ensemble members"]),
    ("scratch", 1, ["(training from scratch)"]),
    ("linear-probe", 1, ["(fine-tuning)", "auto kept the linear probe"]),  # auto's comparison
])
def test_fine_tuned_members_get_their_curves(tmp_path, chosen, members, words):
    ((caption, png),) = _training_curves(tmp_path, _metrics(_history(members), chosen)).items()
    assert png == tmp_path / "figures" / "training_curves.png" and png.is_file()
    assert all(w in caption for w in words), caption


def test_pick_examples_hand_worked():
    y = np.array([0, 0, 0, 1, 1, 2])
    probs = np.array([[.9, .1, 0], [.6, .4, 0], [.2, .8, 0],  # class 0: two right, one wrong
                      [.1, .7, .2], [.05, .9, .05],  # class 1: both right
                      [.5, .3, .2]], float)  # class 2: wrong
    # 3 classes -> 2 correct each, most confident first; then mistakes, most confident first
    assert pick_examples(y, probs) == [0, 1, 4, 3, 2, 5]
    assert pick_examples(y, probs, per_class=1, max_classes=1, max_mistakes=1) == [0, 2]


def test_titles_name_both_classes_of_a_mistake():
    assert example_title("cat", "cat", 0.912) == "cat (correct, p=0.91)"
    assert example_title("cat", "dog", 0.5) == "MISTAKE: true cat\npredicted dog (p=0.50)"


def test_the_legend_is_the_overlay_s_own_colours():
    legend = heat_legend_colors()
    assert legend.shape == (256, 3) and legend.dtype == np.uint8
    black = Image.new("RGB", (1, 1))
    for value, row in ((0.0, 0), (1.0, 255)):
        painted = np.asarray(overlay_cam(black, np.array([[value]], np.float32), alpha=1.0))[0, 0]
        np.testing.assert_array_equal(painted, legend[row])
    assert np.abs(legend[0].astype(int) - legend[255]).sum() > 100  # low and high differ


def test_the_report_of_a_linear_probe_run(trained_run):
    _, run = trained_run
    text = (run / "report.html").read_text(encoding="utf-8")
    counts = json.loads((run / "metrics.json").read_text())["data"]["split_counts"]
    sizes = ", ".join(f"{s} {sum(counts[s].values())}" for s in ("train", "val", "test"))
    assert f"Data: images per split ({sizes})" in text
    assert "so it has no training curve" in text  # said, not drawn
    assert not (run / "figures" / "training_curves.png").exists()
    assert "each test image beside the class activation map" in text
    with Image.open(run / "figures" / "cam_overlays.png") as im:
        assert im.size[0] >= 1000  # two image + heat-map pairs per row
    n_mistakes = re.search(r"no mistakes on the test split", text)
    assert bool(n_mistakes) != (run / "figures" / "mistakes.png").exists()
