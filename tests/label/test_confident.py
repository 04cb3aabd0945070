"""Confident learning against a hand-worked example (Northcutt et al. 2021, section 3)."""

from __future__ import annotations

import numpy as np
import pytest

from sightwise.label.confident import (
    calibrate,
    confident_joint,
    find_label_issues,
    per_class_thresholds,
)

# Worked by hand:
#   t0 = mean p0 over images labelled 0 = (0.9 + 0.8 + 0.3) / 3 = 0.6667
#   t1 = mean p1 over images labelled 1 = (0.8 + 0.9 + 0.4) / 3 = 0.7
#   confident class: x0 0, x1 0, x2 1 (0.7 >= t1), x3 1, x4 1, x5 none (0.6 < t0, 0.4 < t1)
#   counts [[2, 1], [0, 2]]; rows scaled to the label counts (3, 3): [[2, 1], [0, 3]]
#   Q = counts / 6 = [[1/3, 1/6], [0, 1/2]]; noise rate 1/6
#   prune (0 -> 1): round(6 / 6) = 1 image labelled 0 with the largest p1 - p0: x2
PROBS = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.2, 0.8], [0.1, 0.9], [0.6, 0.4]])
LABELS = np.array([0, 0, 0, 1, 1, 1])


def test_thresholds_joint_and_calibration_match_the_hand_worked_example():
    t = per_class_thresholds(PROBS, LABELS, 2)
    assert t == pytest.approx([2.0 / 3, 0.7])
    counts, confident = confident_joint(PROBS, LABELS, t)
    assert counts.tolist() == [[2, 1], [0, 2]]
    assert confident.tolist() == [0, 0, 1, 1, 1, -1]
    assert calibrate(counts, LABELS) == pytest.approx(np.array([[1 / 3, 1 / 6], [0, 1 / 2]]))


def test_issues_ranking_and_noise_rate():
    r = find_label_issues(PROBS, LABELS)
    assert np.flatnonzero(r.issues).tolist() == [2]
    assert r.noise_rate == pytest.approx(1 / 6)
    assert r.score[2] == pytest.approx(0.7)
    assert r.suggested[2] == 1
    assert r.ranked().tolist() == [2]


def test_the_confident_class_is_the_most_probable_of_those_above_threshold():
    # By hand: t = [(0 + 0.8) / 2, 0.4, 0.5] = [0.4, 0.4, 0.5]. Image 0 (labelled 0) passes
    # the thresholds of classes 1 (0.45) and 2 (0.55) and counts under 2, the more probable.
    probs = np.array([[0.0, 0.45, 0.55], [0.8, 0.1, 0.1], [0.1, 0.4, 0.5], [0.1, 0.4, 0.5]])
    labels = np.array([0, 0, 2, 1])
    t = per_class_thresholds(probs, labels, 3)
    assert t == pytest.approx([0.4, 0.4, 0.5])
    counts, confident = confident_joint(probs, labels, t)
    assert confident.tolist() == [2, 0, 2, 2]
    assert counts.tolist() == [[1, 0, 1], [0, 0, 1], [0, 0, 1]]


def test_an_image_whose_given_label_is_the_top_class_is_never_flagged():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=200)
    labels = rng.integers(0, 4, 200)
    r = find_label_issues(probs, labels)
    assert not (r.issues & (probs.argmax(1) == labels)).any()
    assert r.joint.sum() == pytest.approx(1.0)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="one row per label"):
        find_label_issues(PROBS, LABELS[:3])
    with pytest.raises(ValueError, match="index the columns"):
        find_label_issues(PROBS, np.array([0, 0, 0, 1, 1, 2]))
