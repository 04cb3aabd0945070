"""Classification metrics with bootstrap confidence intervals.

Point estimates come from scikit-learn so that our numbers are the field's numbers. The
bootstrap is ours because it must be fast: 1000 resamples are drawn as one index matrix
and the per-resample accuracy and macro-F1 are computed with ``np.bincount`` instead of
1000 scikit-learn calls (DESIGN.md, "Honest numbers": small n carries an interval).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from sightwise.evaluate.calibration import expected_calibration_error

# Keeps one chunk of resample indices near 16 MB of int64 whatever n is.
_MAX_CHUNK_ELEMENTS = 2_000_000
_VECTORISED = ("accuracy", "macro_f1")


def _resample_chunks(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Yield (k, n) index matrices, k <= n_boot, from one seeded generator.

    Every bootstrap path draws through here, so the vectorised and the generic paths see
    identical resamples for the same seed.
    """
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_CHUNK_ELEMENTS // max(n, 1))
    for start in range(0, n_boot, chunk):
        yield rng.integers(0, n, size=(min(chunk, n_boot - start), n))


def _bootstrap_acc_f1(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, n_boot: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and macro-F1 of every resample.

    Macro-F1 follows scikit-learn's default: the mean over classes that occur in the
    resample's y_true or y_pred, F1 = 2TP / (support + predicted count), 0 when TP = 0.
    """
    correct = (y_true == y_pred).astype(np.float64)
    accs, f1s = [], []
    for idx in _resample_chunks(len(y_true), n_boot, seed):
        k = idx.shape[0]
        # Offset each resample's class ids so one bincount counts all k resamples at once.
        offset = (np.arange(k) * n_classes)[:, None]
        t = (y_true[idx] + offset).ravel()
        p = (y_pred[idx] + offset).ravel()
        size = k * n_classes
        tp = np.bincount(t, weights=correct[idx].ravel(), minlength=size).reshape(k, -1)
        denom = (np.bincount(t, minlength=size) + np.bincount(p, minlength=size)).reshape(
            k, -1
        )
        present = denom > 0
        f1 = np.divide(2.0 * tp, denom, out=np.zeros_like(tp), where=present)
        accs.append(correct[idx].mean(axis=1))
        f1s.append(f1.sum(axis=1) / present.sum(axis=1))
    return np.concatenate(accs), np.concatenate(f1s)


def _percentile_ci(stats: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def bootstrap_ci(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    metric_fn: Callable[[np.ndarray, np.ndarray], float] | str,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap ``(1 - alpha)`` interval of a metric over test samples.

    ``metric_fn`` is either a callable ``f(y_true, y_pred) -> float`` (called once per
    resample, so it costs n_boot calls) or one of the strings ``"accuracy"`` and
    ``"macro_f1"``, which use a vectorised path with the same resamples.

    >>> y = np.array([0, 1, 1, 0, 1, 0, 1, 1])
    >>> lo, hi = bootstrap_ci(y, y, "accuracy", n_boot=200)
    >>> (lo, hi)
    (1.0, 1.0)
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError("y_true and y_pred must be non-empty 1-D arrays of equal length")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if isinstance(metric_fn, str):
        if metric_fn not in _VECTORISED:
            raise ValueError(f"metric_fn string must be one of {_VECTORISED}, got {metric_fn!r}")
        yt, yp = y_true.astype(np.int64), y_pred.astype(np.int64)
        n_classes = int(max(yt.max(), yp.max())) + 1
        acc, f1 = _bootstrap_acc_f1(yt, yp, n_classes, n_boot, seed)
        return _percentile_ci(acc if metric_fn == "accuracy" else f1, alpha)
    stats = [
        float(metric_fn(y_true[row], y_pred[row]))
        for idx in _resample_chunks(len(y_true), n_boot, seed)
        for row in idx
    ]
    return _percentile_ci(np.asarray(stats), alpha)


def _validate(
    y_true: np.ndarray, probs: np.ndarray, class_names: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes and ranges; return int64 labels and row-normalised float64 probs."""
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true)
    n_classes = len(class_names)
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] != n_classes:
        raise ValueError(f"probs must be (N>0, {n_classes}) for {n_classes} class names, "
                         f"got {probs.shape}")
    if n_classes < 2 or len(set(class_names)) != n_classes:
        raise ValueError("class_names must hold at least 2 distinct names")
    if y_true.shape != (probs.shape[0],) or not np.issubdtype(y_true.dtype, np.integer):
        raise ValueError(f"y_true must be 1-D integer with {probs.shape[0]} entries")
    if y_true.min() < 0 or y_true.max() >= n_classes:
        raise ValueError(f"y_true values must lie in [0, {n_classes - 1}]")
    sums = probs.sum(axis=1)
    if not np.all(np.isfinite(probs)) or probs.min() < 0 or not np.allclose(sums, 1, atol=1e-3):
        raise ValueError("probs must be finite probabilities whose rows sum to 1 "
                         "(pass softmax(logits), not logits)")
    # float32 softmax rows can be 1e-7 off; scikit-learn's log_loss warns on that.
    return y_true.astype(np.int64), probs / sums[:, None]


def _auroc(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """Binary: AUROC of the positive class. Multi-class: macro one-vs-rest.

    Classes absent from y_true have no positives, so their one-vs-rest AUROC is undefined;
    the macro mean is over the classes present (scikit-learn would return NaN). With
    every class present this equals ``roc_auc_score(..., multi_class="ovr")``.
    """
    present = np.unique(y_true)
    if present.size < 2:
        return None
    if probs.shape[1] == 2:
        return float(roc_auc_score(y_true, probs[:, 1]))
    return float(np.mean([roc_auc_score(y_true == c, probs[:, c]) for c in present]))


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    # scikit-learn warns when y_pred holds a class absent from y_true; on a small test
    # split that is expected and the score (mean recall over true classes) is still right.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(y_true, y_pred))


def _per_class(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict:
    labels = list(range(len(class_names)))
    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
               "support": int(s[i])}
        for i, name in enumerate(class_names)
    }


def classification_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: list[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    probs_uncalibrated: np.ndarray | None = None,
) -> dict:
    """All headline metrics of a classifier on one split, as a JSON-serialisable dict.

    ``probs`` are (N, C) probabilities (calibrated, when a temperature was fitted); the
    prediction is their arg-max. Keys: ``n``, ``accuracy``, ``balanced_accuracy``,
    ``macro_f1``, ``auroc`` (None when y_true holds one class), ``log_loss``, ``ece``,
    ``ece_uncalibrated``, ``accuracy_ci``, ``macro_f1_ci`` ([lo, hi], 95 % percentile
    bootstrap; None when ``n_boot == 0``), ``per_class`` and ``confusion_matrix``
    (rows = true, columns = predicted, every class has a row and a column).

    >>> m = classification_metrics(np.array([0, 1, 1]),
    ...     np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]), ["cat", "dog"], n_boot=50)
    >>> m["n"], round(m["accuracy"], 3), m["confusion_matrix"]
    (3, 0.667, [[1, 0], [1, 1]])
    """
    y_true, probs = _validate(y_true, probs, class_names)
    n_classes = len(class_names)
    labels = list(range(n_classes))
    y_pred = probs.argmax(axis=1)
    ece = expected_calibration_error(probs, y_true, n_bins=15)
    ece_uncal = ece
    if probs_uncalibrated is not None:
        _, p_uncal = _validate(y_true, probs_uncalibrated, class_names)
        ece_uncal = expected_calibration_error(p_uncal, y_true, n_bins=15)
    acc_ci = f1_ci = None
    if n_boot > 0:
        acc_s, f1_s = _bootstrap_acc_f1(y_true, y_pred, n_classes, n_boot, seed)
        acc_ci, f1_ci = list(_percentile_ci(acc_s, 0.05)), list(_percentile_ci(f1_s, 0.05))
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": _balanced_accuracy(y_true, y_pred),
        # scikit-learn's default label set: classes seen in y_true or y_pred.
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "auroc": _auroc(y_true, probs),
        "log_loss": float(log_loss(y_true, probs, labels=labels)),
        "ece": float(ece),
        "ece_uncalibrated": float(ece_uncal),
        "accuracy_ci": acc_ci,
        "macro_f1_ci": f1_ci,
        "per_class": _per_class(y_true, y_pred, class_names),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
