"""Calibration: softmax vs scipy, ECE vs a hand-computed case and Guo et al.'s loop,
temperature scaling recovers a known temperature."""


import numpy as np
import pytest
import scipy.special
import scipy.stats
from sklearn.metrics import log_loss

from sightwise.evaluate.calibration import (
    choose_temperature,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    softmax,
)


def _sample_labels(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw one label per row from a categorical distribution (inverse CDF)."""
    u = rng.random((probs.shape[0], 1))
    return np.minimum((probs.cumsum(axis=1) < u).sum(axis=1), probs.shape[1] - 1)


def _nll(logits, y, t):
    p = softmax(logits, t)
    return float(-np.mean(np.log(p[np.arange(len(y)), y])))


def test_softmax_matches_scipy_and_is_stable():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(20, 6)).astype(np.float32)
    z64 = z.astype(np.float64)
    np.testing.assert_allclose(softmax(z), scipy.special.softmax(z64, axis=1))
    np.testing.assert_allclose(softmax(z, 3.0), scipy.special.softmax(z64 / 3.0, axis=1))
    assert softmax(z).dtype == np.float64
    big = softmax(np.array([[1e4, 0.0, -1e4]]))
    assert np.all(np.isfinite(big)) and big[0, 0] == 1.0
    with pytest.raises(ValueError):
        softmax(z, 0.0)


def test_ece_hand_computed():
    # Bins of width 0.2 (lo, hi]:
    #   (0.4, 0.6]: conf 0.55 right            -> |1.0 - 0.55| * 1/5 = 0.09
    #   (0.6, 0.8]: conf 0.65 right, 0.75 wrong -> |0.5 - 0.70| * 2/5 = 0.08
    #   (0.8, 1.0]: conf 0.95 right, 0.95 wrong -> |0.5 - 0.95| * 2/5 = 0.18
    conf = np.array([0.55, 0.65, 0.75, 0.95, 0.95])
    probs = np.stack([conf, 1 - conf], axis=1)
    y = np.array([0, 0, 1, 0, 1])
    assert expected_calibration_error(probs, y, n_bins=5) == pytest.approx(0.35)
    b = reliability_bins(probs, y, n_bins=5)
    assert b["count"].tolist() == [0, 0, 1, 2, 2]
    np.testing.assert_allclose(b["accuracy"], [0, 0, 1.0, 0.5, 0.5])
    np.testing.assert_allclose(b["confidence"], [0, 0, 0.55, 0.7, 0.95])
    np.testing.assert_allclose(b["bin_lower"], [0, 0.2, 0.4, 0.6, 0.8])
    np.testing.assert_allclose(b["bin_upper"], [0.2, 0.4, 0.6, 0.8, 1.0])


def test_confidence_on_edge_goes_to_lower_bin():
    probs = np.array([[0.6, 0.4], [1.0, 0.0]])
    b = reliability_bins(probs, np.array([0, 0]), n_bins=5)
    assert b["count"].tolist() == [0, 0, 1, 0, 1]


def _guo_reference_ece(probs, y, n_bins):
    """The loop from Guo et al.'s reference code, kept deliberately naive."""
    conf, pred = probs.max(1), probs.argmax(1)
    acc = pred == y
    edges = np.linspace(0, 1, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(acc[m].mean() - conf[m].mean())
    return ece


@pytest.mark.parametrize("n_classes", [2, 7])
def test_ece_matches_reference_loop(n_classes):
    rng = np.random.default_rng(n_classes)
    probs = softmax(rng.normal(scale=2.0, size=(500, n_classes)))
    y = rng.integers(0, n_classes, 500)
    for n_bins in (1, 10, 15):
        assert expected_calibration_error(probs, y, n_bins) == pytest.approx(
            _guo_reference_ece(probs, y, n_bins), abs=1e-12
        )
    assert reliability_bins(probs, y)["count"].sum() == 500


def test_fit_temperature_recovers_known_temperature():
    rng = np.random.default_rng(0)
    z = rng.normal(scale=4.0, size=(5000, 5))
    y = _sample_labels(softmax(z, 2.5), rng)
    t = fit_temperature(z, y)
    assert abs(t - 2.5) < 0.3
    # Calibrating must also lower ECE on these over-confident logits.
    assert expected_calibration_error(softmax(z, t), y) < expected_calibration_error(
        softmax(z), y
    )


@pytest.mark.parametrize("true_t", [0.5, 1.0])
def test_fit_temperature_never_worse_than_one(true_t):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(2000, 4))
    y = _sample_labels(softmax(z, true_t), rng)
    t = fit_temperature(z, y)
    assert 0.05 <= t <= 20
    assert _nll(z, y, t) <= _nll(z, y, 1.0) + 1e-12
    if true_t == 0.5:  # under-confident logits get sharpened
        assert t < 1.0


def test_fit_temperature_returns_one_when_nothing_improves():
    # Uniform logits: every temperature gives the same NLL, so T = 1 must be kept.
    assert fit_temperature(np.zeros((10, 3)), np.arange(10) % 3) == 1.0


def test_choose_temperature_statistic_matches_sklearn_log_loss():
    rng = np.random.default_rng(3)
    z = rng.normal(scale=3.0, size=(300, 3))
    y = _sample_labels(softmax(z, 1.6), rng)
    c = choose_temperature(z, y)
    stat = 2 * len(y) * (log_loss(y, softmax(z), labels=[0, 1, 2])
                         - log_loss(y, softmax(z, c.fitted), labels=[0, 1, 2]))
    assert c.statistic == pytest.approx(stat, rel=1e-9)
    assert c.p_value == pytest.approx(scipy.stats.chi2.sf(stat, 1), rel=1e-9)
    assert c.p_value < 0.05 and c.temperature == c.fitted == fit_temperature(z, y)
    assert c.to_dict()["applied"] is True


def test_choose_temperature_keeps_one_without_evidence():
    # Small, slightly over-confident validation set: the fit moves T, the test keeps 1.
    rng = np.random.default_rng(4)
    z = rng.normal(scale=3.0, size=(40, 2))
    y = _sample_labels(softmax(z, 1.15), rng)
    c = choose_temperature(z, y)
    assert c.fitted != 1.0 and c.p_value >= 0.05 and c.temperature == 1.0
    assert c.to_dict()["applied"] is False


def test_choose_temperature_false_alarm_rate_is_about_alpha():
    # Calibrated logits (labels drawn from softmax(z)): T = 1 is rejected ~5% of the time.
    rng = np.random.default_rng(5)
    rejected = 0
    for _ in range(300):
        z = rng.normal(scale=2.0, size=(200, 3))
        rejected += choose_temperature(z, _sample_labels(softmax(z), rng)).temperature != 1.0
    assert 0.02 <= rejected / 300 <= 0.09


def test_input_validation():
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((4, 2)), np.array([0, 1, 2, 0]))  # label out of range
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((4, 2)), np.array([0, 1]))  # length mismatch
    with pytest.raises(ValueError):
        fit_temperature(np.array([[np.nan, 0.0]]), np.array([0]))
    with pytest.raises(ValueError):
        expected_calibration_error(np.ones(4), np.zeros(4, dtype=int))  # 1-D probs
    with pytest.raises(ValueError):
        reliability_bins(np.full((2, 2), 0.5), np.array([0, 1]), n_bins=0)
