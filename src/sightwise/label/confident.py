"""Confident learning: which given labels are probably wrong, from out-of-fold probabilities.

Written from the paper (C. Northcutt, L. Jiang, I. Chuang, "Confident Learning: Estimating
Uncertainty in Dataset Labels", JAIR 70, 2021), not from cleanlab (AGPL). The steps:

1. Per-class thresholds: t_j = the mean probability of class j over the images *labelled* j
   (how confident the model is, on average, about a class when the label is right).
2. The confident joint C[i, j]: images labelled i whose probability of j reaches t_j; an
   image counts once, under the most probable of the classes that pass their threshold.
3. Calibrate: scale each row of C to the number of images labelled i, divide by n, giving
   Q, an estimate of the joint distribution of (given label, true label).
4. Prune by noise rate: for every off-diagonal cell (i, j), flag the round(n Q[i, j])
   images labelled i with the largest margin p_j - p_i. An image whose given label is
   also the model's top class is never flagged.

Suspects are ranked by self-confidence: 1 - p(given label), largest first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ConfidentResult:
    thresholds: np.ndarray  # (C,)
    counts: np.ndarray  # (C, C) confident joint, rows = given label, cols = confident label
    joint: np.ndarray  # (C, C) calibrated joint Q (sums to 1)
    issues: np.ndarray  # (n,) bool: flagged as a probable label error
    suggested: np.ndarray  # (n,) most probable class
    score: np.ndarray  # (n,) 1 - p(given label): larger = more suspicious

    @property
    def noise_rate(self) -> float:
        """Estimated share of wrong labels: the off-diagonal mass of Q."""
        return float(1.0 - np.trace(self.joint))

    def ranked(self) -> np.ndarray:
        """Flagged indices, most suspicious first (ties: lower index)."""
        idx = np.flatnonzero(self.issues)
        return idx[np.lexsort((idx, -self.score[idx]))]


def per_class_thresholds(probs: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """t_j = mean p_j over images labelled j (inf for a class with no image: never passed)."""
    t = np.full(n_classes, np.inf)
    for j in range(n_classes):
        m = labels == j
        if m.any():
            t[j] = float(probs[m, j].mean())
    return t


def confident_joint(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(counts (C,C), confident class per image or -1 when no class passes its threshold)."""
    n_classes = probs.shape[1]
    above = probs >= thresholds[None, :] - 1e-12  # mean of equal values can round down
    masked = np.where(above, probs, -np.inf)
    confident = np.where(above.any(1), masked.argmax(1), -1)
    counts = np.zeros((n_classes, n_classes), np.int64)
    ok = confident >= 0
    np.add.at(counts, (labels[ok], confident[ok]), 1)
    return counts, confident


def calibrate(counts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Q: each row of the confident joint scaled to that label's image count, over n."""
    n_classes = counts.shape[0]
    given = np.bincount(labels, minlength=n_classes).astype(np.float64)
    rows = counts.sum(1).astype(np.float64)
    scaled = np.divide(counts * given[:, None], rows[:, None], out=np.zeros(counts.shape),
                       where=rows[:, None] > 0)
    # A class whose images never passed any threshold: keep them as correct (diagonal).
    empty = (rows == 0) & (given > 0)
    scaled[empty, empty] = given[empty]
    return scaled / max(given.sum(), 1.0)


def prune_by_noise_rate(probs: np.ndarray, labels: np.ndarray, joint: np.ndarray) -> np.ndarray:
    n, n_classes = probs.shape
    issues = np.zeros(n, bool)
    for i in range(n_classes):
        members = np.flatnonzero(labels == i)
        if not len(members):
            continue
        for j in range(n_classes):
            if j == i:
                continue
            num = int(round(joint[i, j] * n))
            if num <= 0:
                continue
            margin = probs[members, j] - probs[members, i]
            order = np.lexsort((members, -margin))  # largest margin first
            issues[members[order[:num]]] = True
    issues &= probs.argmax(1) != labels
    return issues


def find_label_issues(probs: np.ndarray, labels: np.ndarray) -> ConfidentResult:
    """Confident learning on out-of-fold probabilities (n, C) and given labels (n,)."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError("probs must be (n, C) with one row per label")
    if len(labels) and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError("labels must index the columns of probs")
    t = per_class_thresholds(probs, labels, probs.shape[1])
    counts, _ = confident_joint(probs, labels, t)
    q = calibrate(counts, labels)
    issues = prune_by_noise_rate(probs, labels, q)
    self_conf = probs[np.arange(len(labels)), labels] if len(labels) else np.zeros(0)
    return ConfidentResult(t, counts, q, issues, probs.argmax(1) if len(probs) else
                           np.zeros(0, np.int64), 1.0 - self_conf)
