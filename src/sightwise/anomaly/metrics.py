"""Defect-detection metrics: image/pixel AUROC (scikit-learn) and PRO.

PRO (Bergmann et al., "The MVTec Anomaly Detection Dataset", IJCV 2021, Sec. 4.2): for
each threshold, the mean over ground-truth connected regions of the fraction of the region
flagged, plotted against the false-positive rate on defect-free pixels; the area under
that curve up to FPR 0.3, divided by 0.3.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score


def image_auroc(scores, is_defect) -> float | None:
    y = np.asarray(is_defect, bool)
    if y.all() or not y.any():
        return None
    return float(roc_auc_score(y, np.asarray(scores, np.float64)))


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float | None:
    """maps, masks: (N, H, W); masks are boolean ground truth. Computed as `auroc_against`
    (equal to scikit-learn's roc_auc_score) so tens of millions of pixels cost one sort of
    the defect-free ones, in their own dtype, rather than a float64 ROC curve over all."""
    maps, masks = np.asarray(maps), np.asarray(masks, bool)
    return auroc_against(maps[masks], np.sort(maps[~masks]))


def auroc_against(positives: np.ndarray, *sorted_negatives: np.ndarray) -> float | None:
    """AUROC of `positives` against the union of already sorted negative arrays, in its
    Mann-Whitney form: P(positive > negative) + P(tie) / 2. A binary search per positive,
    so a large negative set (every good image's pixels) is sorted once, not once per call.

    >>> auroc_against(np.array([0.5, 2.0]), np.array([0.0, 1.0]), np.array([0.5]))
    0.75
    """
    # Searched in the negatives' own dtype: float64 positives would make numpy convert each
    # (large, float32) negative array to float64 on every call.
    pos = np.asarray(positives)
    pos = pos.ravel().astype(np.result_type(pos, *sorted_negatives))
    n_neg = sum(len(n) for n in sorted_negatives)
    if not len(pos) or not n_neg:
        return None
    wins = 0.0
    for neg in sorted_negatives:
        below = np.searchsorted(neg, pos, side="left")
        ties = np.searchsorted(neg, pos, side="right") - below
        wins += float(below.sum(dtype=np.float64)) + 0.5 * float(ties.sum(dtype=np.float64))
    return wins / (len(pos) * n_neg)


def _thresholds(all_scores: np.ndarray, normal: np.ndarray, fpr_limit: float, steps: int):
    uniq = np.unique(all_scores)
    if len(uniq) <= steps:
        return uniq[::-1]
    # Dense where it matters: quantiles of the defect-free pixels spanning FPR 0..limit+.
    levels = 1.0 - np.linspace(0.0, min(1.0, fpr_limit * 1.2), steps)
    t = np.quantile(normal, levels)
    return np.unique(np.concatenate([t, [all_scores.max()]]))[::-1]


def pro_score(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3,
              steps: int = 2000) -> float | None:
    """Normalised area under the per-region-overlap curve up to `fpr_limit` (pixels with
    score >= threshold are flagged). None without any defect region or defect-free pixel."""
    maps = np.asarray(maps, np.float64)
    masks = np.asarray(masks, bool)
    normal = np.sort(maps[~masks])
    if normal.size == 0 or not masks.any():
        return None
    regions = []
    for m, g in zip(maps, masks, strict=True):
        labels, n = ndimage.label(g)  # 4-connectivity, as the MVTec evaluation code
        regions += [np.sort(m[labels == i]) for i in range(1, n + 1)]
    ts = _thresholds(maps.ravel(), normal, fpr_limit, steps)
    fpr = (normal.size - np.searchsorted(normal, ts, "left")) / normal.size
    pro = np.mean([(r.size - np.searchsorted(r, ts, "left")) / r.size for r in regions], axis=0)
    return _area(np.concatenate([[0.0], fpr]), np.concatenate([[0.0], pro]), fpr_limit)


def _area(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """Trapezoid area of the (non-decreasing) curve from 0 to `limit`, interpolating the
    curve at `limit`, divided by `limit`."""
    keep = fpr <= limit
    x, y = list(fpr[keep]), list(pro[keep])
    nxt = np.argmax(~keep) if (~keep).any() else None
    if nxt is not None and x[-1] < limit:
        x0, y0, x1, y1 = fpr[nxt - 1], pro[nxt - 1], fpr[nxt], pro[nxt]
        x.append(limit)
        y.append(y0 + (y1 - y0) * (limit - x0) / (x1 - x0))
    return float(np.trapezoid(y, x) / limit)


def detection_counts(scores, is_defect, threshold: float) -> dict:
    """Precision, recall, F1 and the false-alarm rate on good images at `threshold`."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(is_defect, bool)
    pred = s > threshold
    tp, fp = int(np.sum(pred & y)), int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    far = fp / int((~y).sum()) if (~y).any() else None
    return {"precision": precision, "recall": recall, "f1": f1, "false_alarm_rate": far,
            "tp": tp, "fp": fp, "fn": fn, "tn": int(np.sum(~pred & ~y))}
