"""Which image to label next: random, k-center, margin, and auto (k-center, then margin
with a diversity filter).

- **k-center** (greedy; Gonzalez 1985, used for active learning as the "core-set" of Sener
  & Savarese, ICLR 2018): repeatedly pick the image farthest from everything already
  labelled or picked, so the first labels cover the whole pool instead of its densest mode.
- **margin** (Scheffer et al. 2001): the smallest gap between the two most probable classes,
  the images the current model is least sure about.
- **auto**: while labels are too few for a model's uncertainty to mean much (some class has
  fewer than `few` labels and fewer than `few` x classes images are labelled), k-center
  among the typical images (the least dense quarter left out: plain k-center's farthest
  picks are often outliers, and on Grocery Store it did worse than random below ~100
  labels, see docs/guides/labelling.md); then the `pool_factor x k` smallest margins,
  thinned to k by k-center so one batch does not spend all its labels on near-copies of
  one confusing image (the idea of Citovsky et al.'s Cluster-Margin, NeurIPS 2021, reduced
  to one greedy pass).

Embeddings are compared by Euclidean distance after centring and L2 normalisation (cosine
geometry around the pool's mean). Everything here is numpy and scikit-learn: the labelling page runs
it without torch.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

STRATEGIES = ("auto", "random", "kcenter", "margin")
FEW = 3  # labels per class before auto trusts the model's margins
POOL_FACTOR = 10  # auto's margin shortlist, as a multiple of the batch size
OUTLIER_SHARE = 0.25  # auto's cold start leaves out this share of least typical images
DENSITY_K = 10


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def centred_unit(x: np.ndarray) -> np.ndarray:
    """Centre, then unit length: pooled CNN features are all positive (ReLU), so raw cosines
    crowd near 1 and distances say little until the common mean is removed."""
    x = np.asarray(x, np.float32)
    return unit_rows(x - x.mean(0))


def _sq_dist_to(x: np.ndarray, sq: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance of every row of x to its nearest row of y (chunked)."""
    out = np.full(len(x), np.inf, np.float64)
    for i in range(0, len(y), 256):
        yc = y[i:i + 256]
        d = sq[:, None] + (yc.astype(np.float64) ** 2).sum(1)[None, :] - 2.0 * (
            x.astype(np.float64) @ yc.T.astype(np.float64))
        out = np.minimum(out, np.maximum(d, 0.0).min(axis=1))
    return out


def kcenter_greedy(x: np.ndarray, k: int, selected: Sequence[int] = (),
                   candidates: Sequence[int] | None = None) -> list[int]:
    """Indices of k candidates chosen by greedy k-center, in the order picked.

    Each pick is the candidate whose distance to its nearest selected-or-picked point is
    largest (ties: the lower candidate position). With nothing selected the first pick is
    the candidate nearest the candidates' mean, a typical image rather than an outlier.

    >>> x = np.array([[0.0], [1.0], [2.0], [10.0]])
    >>> kcenter_greedy(x, 2, selected=[0])
    [3, 2]
    """
    if candidates is None:
        candidates = np.setdiff1d(np.arange(len(x)), np.asarray(selected, np.int64))
    cand = np.asarray(candidates, np.int64)
    k = min(int(k), len(cand))
    if k <= 0:
        return []
    xc = np.asarray(x, np.float64)[cand]
    sq = (xc ** 2).sum(1)
    sel = np.asarray(selected, np.int64)
    d = _sq_dist_to(xc, sq, np.asarray(x, np.float64)[sel]) if len(sel) else None
    picks: list[int] = []
    for _ in range(k):
        if d is None:
            j = int(np.argmin(((xc - xc.mean(0)) ** 2).sum(1)))
            d = np.full(len(xc), np.inf)
        else:
            j = int(np.argmax(d))
        picks.append(int(cand[j]))
        d = np.minimum(d, np.maximum(sq + sq[j] - 2.0 * (xc @ xc[j]), 0.0))
        d[j] = -1.0  # never pick the same candidate twice (a duplicate has distance 0 too)
    return picks


def density(x: np.ndarray, k: int = DENSITY_K, max_ref: int = 2000, seed: int = 0) -> np.ndarray:
    """Typicality of each row of x (unit rows): the mean cosine similarity to its k nearest
    neighbours among at most `max_ref` reference rows (a seeded sample of x, so a large
    pool costs N x max_ref, not N^2). Higher = in a denser region."""
    n = len(x)
    if n < 2:
        return np.zeros(n)
    ref = np.arange(n) if n <= max_ref else np.sort(
        np.random.default_rng(seed).choice(n, max_ref, replace=False))
    where = {int(r): j for j, r in enumerate(ref)}
    k = max(1, min(k, len(ref) - 1))
    out = np.empty(n)
    for i in range(0, n, 512):
        rows = np.arange(i, min(i + 512, n))
        sim = x[rows] @ x[ref].T
        for r, row in enumerate(rows):  # a row is not its own neighbour
            if int(row) in where:
                sim[r, where[int(row)]] = -np.inf
        out[rows] = np.partition(sim, -k, axis=1)[:, -k:].mean(1)
    return out


def typical_kcenter(x: np.ndarray, k: int, selected: Sequence[int], candidates: Sequence[int],
                    dens: np.ndarray, share: float = OUTLIER_SHARE) -> list[int]:
    """k-center among the candidates outside the least dense `share` (a robust k-center:
    plain k-center's farthest-first picks are often outliers, which teach a small labelled
    set little; Sener & Savarese's robust variant also leaves a budget of outliers out)."""
    cand = np.asarray(candidates, np.int64)
    keep = cand[dens[cand] >= np.quantile(dens[cand], share)] if len(cand) else cand
    return kcenter_greedy(x, k, selected, keep if len(keep) >= k else cand)


def margins(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per row (1.0 for a single-class row).

    >>> margins(np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])).round(3).tolist()
    [0.2, 0.7]
    """
    p = np.asarray(probs, np.float64)
    if p.shape[1] < 2:
        return np.ones(len(p))
    top2 = np.partition(p, -2, axis=1)[:, -2:]
    return top2.max(1) - top2.min(1)


def smallest_margin(probs: np.ndarray, k: int, candidates: Sequence[int]) -> list[int]:
    """The k candidates with the smallest margin (ties: lower index first)."""
    cand = np.asarray(candidates, np.int64)
    m = margins(np.asarray(probs)[cand])
    order = np.lexsort((cand, m))
    return [int(cand[i]) for i in order[:k]]


def diverse_margin(x: np.ndarray, probs: np.ndarray, k: int, selected: Sequence[int],
                   candidates: Sequence[int], pool_factor: int = POOL_FACTOR) -> list[int]:
    """The pool_factor*k smallest-margin candidates, thinned to k by k-center."""
    shortlist = smallest_margin(probs, max(k, pool_factor * k), candidates)
    return kcenter_greedy(x, k, selected=selected, candidates=shortlist)


def is_cold(labels: Sequence[int], n_classes: int, few: int = FEW) -> bool:
    """True while auto should still explore (some class under `few` labels, and fewer than
    few x classes labels in all)."""
    y = np.asarray(labels, np.int64)
    counts = np.bincount(y, minlength=n_classes) if len(y) else np.zeros(n_classes)
    return bool(counts.min() < few and len(y) < few * n_classes)


def select(strategy: str, k: int, *, candidates: Sequence[int], rng: np.random.Generator,
           emb: np.ndarray | None = None, probs: np.ndarray | None = None,
           selected: Sequence[int] = (), labels: Sequence[int] = (), n_classes: int = 2,
           dens: np.ndarray | None = None, few: int = FEW,
           pool_factor: int = POOL_FACTOR) -> tuple[list[int], str]:
    """(picks, how they were chosen). `selected` are the already labelled (or leased)
    indices, `labels` the classes of the labelled ones; `emb` unit rows, `probs` the
    current model's calibrated probabilities (None: no model yet), `dens` the pool's
    `density` (auto's cold start; computed here when not given)."""
    cand = np.asarray(candidates, np.int64)
    k = min(int(k), len(cand))
    if k <= 0:
        return [], strategy
    if strategy not in STRATEGIES:
        raise ValueError(f"order must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if strategy == "random" or (strategy == "margin" and probs is None):
        # margin without a model yet starts from a random batch, as uncertainty sampling does
        return [int(i) for i in rng.choice(cand, size=k, replace=False)], "random"
    if emb is None and strategy != "margin":
        raise ValueError(f"order {strategy!r} needs embeddings: give a bundle (--bundle)")
    if strategy == "margin":
        return smallest_margin(probs, k, cand), "margin"
    if strategy == "kcenter":
        return kcenter_greedy(emb, k, selected, cand), "kcenter"
    if probs is None or is_cold(labels, n_classes, few):
        dens = density(emb) if dens is None else dens
        return typical_kcenter(emb, k, selected, cand, dens), "typical k-center"
    return diverse_margin(emb, probs, k, selected, cand, pool_factor), "margin+diversity"


def probe_probabilities(x: np.ndarray, idx: Sequence[int], y: Sequence[int], n_classes: int,
                        C: float = 1.0, seed: int = 0) -> np.ndarray | None:
    """Probabilities (N, n_classes) of a logistic-regression probe fitted on rows `idx` of
    x with labels y; None while fewer than two classes are labelled. Classes without a
    label get probability 0 (the model cannot predict what it has never seen)."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y, np.int64)
    if len(set(y.tolist())) < 2:
        return None
    xs = np.asarray(x, np.float32)
    # tol 1e-3: the same accuracy as the default 1e-4 on NEU and Grocery, 3-5x fewer steps.
    lr = LogisticRegression(C=C, max_iter=2000, tol=1e-3, random_state=seed)
    with warnings.catch_warnings():
        # Early on there are more classes than labels per class; scikit-learn then warns
        # that y "could represent a regression problem". It does not: say nothing.
        warnings.filterwarnings("ignore", message="The number of unique classes")
        lr.fit(xs[np.asarray(idx, np.int64)], y)
    out = np.zeros((len(xs), n_classes), np.float32)
    out[:, lr.classes_] = lr.predict_proba(xs)
    return out
