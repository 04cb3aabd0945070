"""PRO against a hand-computed curve; AUROCs against scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from sightwise.anomaly.metrics import detection_counts, image_auroc, pixel_auroc, pro_score


def test_pro_hand_computed():
    # Image 0 (one row): ten defect-free pixels scored 0.1 .. 1.0, then region A, two
    # adjacent pixels scored (0.95, 0.55). Image 1: region B, one pixel scored 0.75, then
    # eleven defect-free pixels at -5 (never flagged in range). 21 normals: FPR steps 1/21.
    maps = np.full((2, 1, 12), -5.0)
    masks = np.zeros((2, 1, 12), bool)
    maps[0, 0, :10] = np.linspace(0.1, 1.0, 10)
    maps[0, 0, 10:12] = (0.95, 0.55)
    masks[0, 0, 10:12] = True
    maps[1, 0, 0] = 0.75
    masks[1, 0, 0] = True
    # Walking the threshold down: PRO = 0 at FPR 1/21 (t=1.0); A half covered at t=0.95
    # -> (0.5 + 0)/2 = 0.25; normals 0.9, 0.8 take FPR to 3/21; B at t=0.75 -> 0.75;
    # normals 0.7, 0.6 take FPR to 5/21; A complete at t=0.55 -> 1.0 up to FPR 0.3.
    f = 1 / 21
    expected = (0.25 * (3 * f - f) + 0.75 * (5 * f - 3 * f) + 1.0 * (0.3 - 5 * f)) / 0.3
    assert pro_score(maps, masks) == pytest.approx(expected, abs=1e-9)


def test_pro_perfect_and_random():
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 16, 16), bool)
    masks[:2, 4:8, 4:8] = True
    assert pro_score(masks.astype(float) + 0.01 * rng.random(masks.shape), masks) == pytest.approx(1.0)
    noise = rng.random((4, 16, 16))
    assert 0.0 < pro_score(noise, masks) < 0.5


def test_aurocs_match_sklearn():
    rng = np.random.default_rng(1)
    y = rng.random(50) > 0.6
    s = rng.normal(size=50) + y
    assert image_auroc(s, y) == pytest.approx(roc_auc_score(y, s))
    maps, masks = rng.random((3, 8, 8)), rng.random((3, 8, 8)) > 0.8
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert image_auroc(s, np.zeros(50, bool)) is None


def test_detection_counts():
    c = detection_counts([0.1, 0.2, 0.9, 0.4, 0.8], [0, 0, 0, 1, 1], threshold=0.5)
    assert (c["tp"], c["fp"], c["fn"], c["tn"]) == (1, 1, 1, 2)
    assert c["f1"] == pytest.approx(0.5) and c["false_alarm_rate"] == pytest.approx(1 / 3)


def test_per_class_metrics_match_scikit_learn_on_each_class_against_all_good():
    from sightwise.anomaly.evaluate import per_class_metrics

    rng = np.random.default_rng(3)
    good = rng.normal(0, 1, 20)
    defect = np.r_[rng.normal(2, 1, 7), rng.normal(0.5, 1, 5)]
    classes = ["crack"] * 7 + ["uneven"] * 5
    g_maps = rng.random((20, 6, 5))
    d_maps = rng.random((12, 6, 5))
    masks = [rng.random((6, 5)) > 0.7 for _ in range(12)]
    masks[8] = None  # an uneven image without a mask: in the image metrics, not the pixel one
    d_maps[:7][np.stack(masks[:7])] += 0.5
    out = per_class_metrics(good, defect, classes, 1.0, g_maps, d_maps, masks)
    assert list(out) == ["crack", "uneven"]
    for name, sel in (("crack", range(7)), ("uneven", range(7, 12))):
        sel = list(sel)
        y = np.r_[np.zeros(20), np.ones(len(sel))]
        assert out[name]["n"] == len(sel)
        assert out[name]["image_auroc"] == pytest.approx(roc_auc_score(y, np.r_[good, defect[sel]]))
        assert out[name]["recall"] == pytest.approx(np.mean(defect[sel] > 1.0))
        have = [i for i in sel if masks[i] is not None]
        gt = np.r_[np.zeros(g_maps.size, bool), np.stack([masks[i] for i in have]).ravel()]
        scores = np.r_[g_maps.ravel(), d_maps[have].ravel()]
        assert out[name]["pixel_auroc"] == pytest.approx(roc_auc_score(gt, scores))
        within = [roc_auc_score(masks[i].ravel(), d_maps[i].ravel()) for i in have]
        assert out[name]["pixel_auroc_within_image"] == pytest.approx(np.mean(within))
        all_marked = sum(m.sum() for m in masks if m is not None)
        share = sum(masks[i].sum() for i in have) / all_marked
        assert out[name]["defect_pixel_share"] == pytest.approx(share)
    assert out["crack"]["pixel_auroc"] > out["uneven"]["pixel_auroc"]
    assert out["crack"]["defect_pixel_share"] + out["uneven"]["defect_pixel_share"] == pytest.approx(1.0)
    no_masks = per_class_metrics(good, defect, classes, 1.0)
    assert no_masks["crack"]["pixel_auroc"] is None


def test_auroc_against_sorted_negatives_equals_scikit_learn_with_ties():
    from sightwise.anomaly.metrics import auroc_against

    rng = np.random.default_rng(7)
    pos = rng.integers(2, 9, 300).astype(np.float32)  # few distinct values: many ties
    neg_a, neg_b = rng.integers(0, 7, 1000), rng.integers(0, 5, 400)
    want = roc_auc_score(np.r_[np.ones(300), np.zeros(1400)], np.r_[pos, neg_a, neg_b])
    assert auroc_against(pos, np.sort(neg_a), np.sort(neg_b)) == pytest.approx(want, abs=1e-12)
    assert auroc_against(pos[:0], np.sort(neg_a)) is None


def test_class_of_takes_the_first_folder_and_names_loose_files_after_the_root(tmp_path):
    from sightwise.anomaly.evaluate import _class_of

    root = tmp_path / "defects"
    assert _class_of(root / "crack" / "a.png", root) == "crack"
    assert _class_of(root / "crack" / "left" / "b.png", root) == "crack"
    assert _class_of(root / "c.png", root) == "defects"
