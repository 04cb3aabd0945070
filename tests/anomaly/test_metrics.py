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
