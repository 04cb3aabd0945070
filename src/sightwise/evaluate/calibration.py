"""Probability calibration: temperature scaling and expected calibration error.

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017)
divides the logits by one scalar ``T`` fitted on the validation split. It cannot change
the arg-max, so accuracy is untouched while the probabilities become honest. The ECE here
is the paper's top-label ECE with equal-width confidence bins.

A temperature fitted on a small validation split mostly fits its noise, and when the same
split also picked the checkpoint its predictions look better than fresh ones (a model
that looks under-confident there gets sharpened, and is then over-confident on test).
``choose_temperature`` therefore applies the fitted ``T`` only when a likelihood-ratio test
rejects ``T = 1`` (the model as trained) at the 5% level: a T that the data cannot tell
from 1 is noise, and applying such Ts made test ECE worse, not better (docs/experiments/).

Pure numpy/scipy: the runtime and the server use ``softmax`` without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp
from scipy.stats import chi2

# Bounds on T: below 0.05 the softmax is a hard arg-max, above 20 it is nearly uniform;
# an optimum outside this range means the logits carry no usable calibration signal.
_T_MIN, _T_MAX = 0.05, 20.0


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64.

    Subtracting the row maximum first keeps ``exp`` from overflowing on large logits.

    >>> softmax(np.array([[0.0, 0.0], [1000.0, 0.0]])).round(3).tolist()
    [[0.5, 0.5], [1.0, 0.0]]
    >>> float(softmax(np.array([[2.0, 0.0]]), temperature=2.0)[0, 0].round(4))
    0.7311
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _check_labels(y: np.ndarray, n: int, n_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"y must be 1-D with {n} entries, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must hold integer class indices, got dtype {y.dtype}")
    if n and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"y values must lie in [0, {n_classes - 1}]")
    return y.astype(np.int64)


def _nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of softmax(logits / T); logsumexp keeps it finite."""
    z = logits / temperature
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(y)), y]))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Fit the temperature ``T`` that minimises the NLL of ``softmax(logits / T)``.

    Fit on the validation split, never on test. The search is over ``log T`` (the NLL is
    smoother there and T stays positive) within ``[0.05, 20]``. The result is never worse
    on these logits than ``T = 1``: if the optimiser fails or does not improve, 1.0 is
    returned.

    >>> z = np.array([[4.0, 0.0], [4.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    >>> t = fit_temperature(z, np.array([0, 0, 1, 1]))  # one confident mistake
    >>> t > 1.0  # over-confident logits get softened
    True
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"logits must be a non-empty (N, C) array, got {logits.shape}")
    y = _check_labels(y, logits.shape[0], logits.shape[1])
    if not np.all(np.isfinite(logits)):
        raise ValueError("logits contain NaN or inf")
    base = _nll(logits, y, 1.0)
    res = minimize_scalar(
        lambda log_t: _nll(logits, y, math.exp(log_t)),
        bounds=(math.log(_T_MIN), math.log(_T_MAX)),
        method="bounded",
        options={"xatol": 1e-5},
    )
    if not res.success or not np.isfinite(res.fun) or res.fun >= base:
        return 1.0
    return float(math.exp(res.x))


@dataclass(frozen=True)
class Calibration:
    """The temperature to use, and the evidence for it."""

    temperature: float  # applied: the fitted one when significant, else 1.0
    fitted: float | None  # the maximum-likelihood T on the validation logits (None: no data)
    statistic: float  # likelihood-ratio statistic 2 * (NLL_sum(T=1) - NLL_sum(fitted))
    p_value: float  # chi-square, 1 degree of freedom

    def to_dict(self) -> dict:
        return {"temperature": self.temperature, "fitted_temperature": self.fitted,
                "lr_statistic": self.statistic, "p_value": self.p_value,
                "applied": self.temperature != 1.0}


def choose_temperature(logits: np.ndarray, y: np.ndarray, alpha: float = 0.05) -> Calibration:
    """Fit ``T`` (``fit_temperature``) and keep it only if it is significant at ``alpha``.

    Under ``T = 1`` the likelihood-ratio statistic is asymptotically chi-square with one
    degree of freedom (Wilks), so a calibrated model has ``T = 1`` rejected about an
    ``alpha`` share of the time. The approximation is rough when the validation set is
    perfectly separated (the fitted T runs to its bound) and the test guards against noise,
    not against the optimism of a split that also chose the checkpoint: on a large enough
    validation set that bias becomes significant and is applied.

    >>> z = np.array([[4.0, 0.0]] * 6 + [[0.0, 4.0]] * 2)
    >>> c = choose_temperature(z, np.array([0, 0, 0, 0, 0, 1, 1, 1]))  # 1 mistake in 8
    >>> round(c.fitted, 2), c.temperature, c.p_value > 0.05
    (2.06, 1.0, True)
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    t = fit_temperature(logits, y)
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y).astype(np.int64)
    stat = max(0.0, 2.0 * len(y) * (_nll(z, y, 1.0) - _nll(z, y, t)))
    p = float(chi2.sf(stat, df=1))
    return Calibration(temperature=t if p < alpha else 1.0, fitted=t, statistic=stat, p_value=p)


def _top_label(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"probs must be a non-empty (N, C) array, got {probs.shape}")
    y = _check_labels(y, probs.shape[0], probs.shape[1])
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    return conf, correct


def _bin_index(conf: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin ids for (lower, upper] bins, as in Guo et al.'s reference code."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="left" puts a confidence equal to an edge into the bin below it: (lo, hi].
    idx = np.searchsorted(edges[1:-1], conf, side="left")
    return idx, edges


def reliability_bins(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> dict:
    """Per-bin mean confidence, accuracy and count of the top-label prediction.

    Returns a dict of float64 arrays (``count`` is int64), each of length ``n_bins``:
    ``bin_lower``, ``bin_upper``, ``confidence``, ``accuracy``, ``count``. Empty bins
    have ``count == 0`` and confidence/accuracy 0.0.

    >>> b = reliability_bins(np.array([[0.9, 0.1], [0.3, 0.7]]), np.array([0, 0]), n_bins=2)
    >>> b["count"].tolist(), b["accuracy"].tolist()
    ([0, 2], [0.0, 0.5])
    """
    conf, correct = _top_label(probs, y)
    idx, edges = _bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    safe = np.maximum(count, 1)
    return {
        "bin_lower": edges[:-1].copy(),
        "bin_upper": edges[1:].copy(),
        "confidence": np.bincount(idx, weights=conf, minlength=n_bins) / safe,
        "accuracy": np.bincount(idx, weights=correct, minlength=n_bins) / safe,
        "count": count.astype(np.int64),
    }


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: sum over bins of (bin fraction) * |accuracy - mean confidence|.

    >>> p = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
    >>> # every confidence is in (0.5, 1]: one bin, |accuracy 0.5 - confidence 0.75|
    >>> round(expected_calibration_error(p, np.array([0, 1, 1, 0]), n_bins=2), 4)
    0.25
    """
    b = reliability_bins(probs, y, n_bins)
    frac = b["count"] / b["count"].sum()
    return float(np.sum(frac * np.abs(b["accuracy"] - b["confidence"])))
