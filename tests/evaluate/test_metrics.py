"""Metrics against scikit-learn on random fixtures; bootstrap against a naive loop."""

import json

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from sightwise.evaluate import metrics as metrics_mod
from sightwise.evaluate.calibration import expected_calibration_error, softmax
from sightwise.evaluate.metrics import bootstrap_ci, classification_metrics


def _fixture(n: int, n_classes: int, seed: int, skill: float = 1.5):
    """Probabilities that are better than chance, so the metrics are not all ~1/C."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += skill
    return y, softmax(logits)


def _names(n_classes):
    return [f"class_{i}" for i in range(n_classes)]


@pytest.mark.parametrize("n_classes", [2, 3, 6])
def test_matches_sklearn(n_classes):
    y, probs = _fixture(300, n_classes, seed=n_classes)
    pred = probs.argmax(1)
    labels = list(range(n_classes))
    m = classification_metrics(y, probs, _names(n_classes), n_boot=200)
    assert m["n"] == 300
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["log_loss"] == pytest.approx(log_loss(y, probs, labels=labels))
    if n_classes == 2:
        assert m["auroc"] == pytest.approx(roc_auc_score(y, probs[:, 1]))
    else:
        assert m["auroc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=labels).tolist()
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    for i, name in enumerate(_names(n_classes)):
        pc = m["per_class"][name]
        assert (pc["precision"], pc["recall"], pc["f1"]) == pytest.approx((p[i], r[i], f[i]))
        assert pc["support"] == s[i]
    assert m["ece"] == pytest.approx(expected_calibration_error(probs, y))
    assert m["ece_uncalibrated"] == m["ece"]


def test_is_json_serialisable_with_plain_types():
    y, probs = _fixture(60, 3, seed=0)
    m = classification_metrics(y, probs.astype(np.float32), ["a", "b", "c"], n_boot=100)
    assert json.loads(json.dumps(m)) == m
    assert isinstance(m["n"], int) and isinstance(m["accuracy"], float)
    assert isinstance(m["confusion_matrix"][0][0], int)
    assert all(isinstance(v, float) for v in m["accuracy_ci"] + m["macro_f1_ci"])


def test_absent_class_keeps_its_row_and_auroc_averages_present_classes():
    y, probs = _fixture(200, 4, seed=3)
    y = np.where(y == 3, 0, y)  # class 3 never occurs in y_true
    m = classification_metrics(y, probs, _names(4), n_boot=50)
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (4, 4) and cm[3].sum() == 0
    assert m["per_class"]["class_3"]["support"] == 0
    expected = np.mean([roc_auc_score(y == c, probs[:, c]) for c in range(3)])
    assert m["auroc"] == pytest.approx(expected)
    assert m["log_loss"] == pytest.approx(log_loss(y, probs, labels=range(4)))


def test_auroc_none_when_one_class_present():
    _, probs = _fixture(30, 3, seed=4)
    m = classification_metrics(np.zeros(30, dtype=int), probs, _names(3), n_boot=20)
    assert m["auroc"] is None
    assert json.dumps(m)


def test_uncalibrated_ece_reported_separately():
    y, probs = _fixture(400, 3, seed=5)
    sharp = probs**3 / (probs**3).sum(1, keepdims=True)
    m = classification_metrics(y, probs, _names(3), n_boot=0, probs_uncalibrated=sharp)
    assert m["ece_uncalibrated"] == pytest.approx(expected_calibration_error(sharp, y))
    assert m["ece"] != m["ece_uncalibrated"]
    assert m["accuracy_ci"] is None and m["macro_f1_ci"] is None


def test_rejects_bad_inputs():
    y, probs = _fixture(20, 3, seed=6)
    with pytest.raises(ValueError, match="logits"):
        classification_metrics(y, np.log(probs), _names(3))
    with pytest.raises(ValueError):
        classification_metrics(y, probs, _names(2))
    with pytest.raises(ValueError):
        classification_metrics(y[:-1], probs, _names(3))
    with pytest.raises(ValueError):
        classification_metrics(y, probs, ["a", "a", "b"])


@pytest.mark.parametrize("name, ref", [
    ("accuracy", accuracy_score),
    ("macro_f1", lambda a, b: f1_score(a, b, average="macro", zero_division=0)),
])
def test_vectorised_bootstrap_equals_sklearn_per_resample(name, ref, monkeypatch):
    y, probs = _fixture(150, 5, seed=7, skill=1.0)
    pred = probs.argmax(1)
    assert bootstrap_ci(y, pred, name, n_boot=300, seed=3) == pytest.approx(
        bootstrap_ci(y, pred, ref, n_boot=300, seed=3)
    )
    # Small chunks must draw the same resamples on both paths too.
    monkeypatch.setattr(metrics_mod, "_MAX_CHUNK_ELEMENTS", 1000)
    assert bootstrap_ci(y, pred, name, n_boot=50, seed=1) == pytest.approx(
        bootstrap_ci(y, pred, ref, n_boot=50, seed=1)
    )


def test_metrics_ci_matches_bootstrap_ci_and_is_seeded():
    y, probs = _fixture(300, 4, seed=8)
    pred = probs.argmax(1)
    m = classification_metrics(y, probs, _names(4), seed=11)
    assert tuple(m["accuracy_ci"]) == bootstrap_ci(y, pred, "accuracy", seed=11)
    assert tuple(m["macro_f1_ci"]) == bootstrap_ci(y, pred, "macro_f1", seed=11)
    again = classification_metrics(y, probs, _names(4), seed=11)
    assert again == m
    other = classification_metrics(y, probs, _names(4), seed=12)
    assert other["accuracy_ci"] != m["accuracy_ci"]


def test_ci_contains_estimate_and_narrows_with_n():
    widths = []
    for n in (100, 2000):
        y, probs = _fixture(n, 3, seed=9)
        m = classification_metrics(y, probs, _names(3))
        for key, ci in (("accuracy", "accuracy_ci"), ("macro_f1", "macro_f1_ci")):
            lo, hi = m[ci]
            assert lo <= m[key] <= hi
        widths.append(m["accuracy_ci"][1] - m["accuracy_ci"][0])
    assert widths[1] < widths[0] / 2  # ~1/sqrt(n): expect ~4.5x narrower


def test_bootstrap_ci_validation():
    y = np.array([0, 1, 1])
    with pytest.raises(ValueError):
        bootstrap_ci(y, y, "auroc")
    with pytest.raises(ValueError):
        bootstrap_ci(y, y[:2], "accuracy")
    with pytest.raises(ValueError):
        bootstrap_ci(y, y, "accuracy", n_boot=0)
