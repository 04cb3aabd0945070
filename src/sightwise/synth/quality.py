"""How good are generated images? Distances between feature sets, in numpy.

- KID (Binkowski et al., "Demystifying MMD GANs", ICLR 2018): the unbiased estimate of the
  squared MMD between real and generated features with the cubic polynomial kernel
  k(x, y) = (x.y / d + 1)^3. Unbiased, so it is near 0 for samples of one distribution
  whatever the sample size (FID is biased and needs thousands of images). Its spread is
  estimated, as in the paper, over random subsets.
- Precision, recall, density, coverage (Kynkaenniemi et al., NeurIPS 2019; Naeem et al.,
  ICML 2020): each real feature's k-nearest-neighbour ball approximates the real manifold.
  Precision: the share of generated samples inside some real ball (are they realistic?);
  recall: the share of real samples inside some generated ball (is the variety covered?);
  density: how many real balls hold a generated sample, on average over samples, / k
  (1 for matched distributions, robust to outliers); coverage: the share of real balls
  holding at least one generated sample.
- Memorisation: each generated sample's nearest real (training) image and its distance,
  against that real image's own nearest-real distance. A sample much closer to a training
  image than training images are to each other is a near-copy (the "authenticity" idea of
  Alaa et al., ICML 2022, with the ratio test of Meehan et al., AISTATS 2020).
"""

from __future__ import annotations

import numpy as np

NEAR_COPY_RATIO = 0.5


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel (x.y / d + 1)^3, computed in float64."""
    d = x.shape[1]
    return (np.asarray(x, np.float64) @ np.asarray(y, np.float64).T / d + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, Lemma 6) with the polynomial kernel: the means
    of k over distinct pairs within x and within y, minus twice the mean over x-y pairs."""
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError("KID needs at least 2 real and 2 generated samples")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * kxy.mean())


def kid(real: np.ndarray, fake: np.ndarray, *, subsets: int = 100, subset_size: int | None = None,
        seed: int = 0, alpha: float = 0.05) -> dict:
    """KID on all samples, and its spread over `subsets` random subsets drawn without
    replacement (default size: half the smaller set, at most 1000): the (alpha/2,
    1 - alpha/2) quantiles of those estimates form the interval (subsets are smaller
    than the whole, so the interval is on the wide side)."""
    real, fake = np.asarray(real), np.asarray(fake)
    value = mmd2_unbiased(real, fake)
    m = subset_size or max(2, min(1000, min(len(real), len(fake)) // 2))
    rng = np.random.default_rng(seed)
    est = np.array([mmd2_unbiased(real[rng.choice(len(real), m, replace=False)],
                                  fake[rng.choice(len(fake), m, replace=False)]) for _ in range(subsets)])
    lo, hi = np.quantile(est, [alpha / 2, 1 - alpha / 2])
    return {"value": value, "low": float(lo), "high": float(hi), "subset_mean": float(est.mean()),
            "subset_std": float(est.std(ddof=1)), "subset_size": int(m), "subsets": subsets}


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(a), len(b)), float64, clipped at 0 before the root."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    sq = (a * a).sum(1)[:, None] - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
    return np.sqrt(np.maximum(sq, 0.0))


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row to its k-th nearest other row."""
    if len(x) <= k:
        raise ValueError(f"need more than k={k} samples for k-NN radii, got {len(x)}")
    d = pairwise_distances(x, x)
    np.fill_diagonal(d, np.inf)
    return np.partition(d, k - 1, axis=1)[:, k - 1]


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict:
    """Precision, recall, density and coverage with k-NN balls (Naeem et al.'s k = 5)."""
    r_rad, f_rad = knn_radii(real, k), knn_radii(fake, k)
    d = pairwise_distances(real, fake)  # (n_real, n_fake)
    inside_real = d <= r_rad[:, None]  # fake j inside real ball i
    return {"precision": float(inside_real.any(axis=0).mean()),
            "recall": float((d <= f_rad[None, :]).any(axis=1).mean()),
            "density": float(inside_real.sum() / (k * d.shape[1])),
            "coverage": float(inside_real.any(axis=1).mean()), "k": k}


def memorisation(real: np.ndarray, fake: np.ndarray, ratio: float = NEAR_COPY_RATIO) -> dict:
    """For each generated sample: its nearest real sample, the distance, and that distance
    over the real sample's own distance to its nearest other real sample. Ratios below
    `ratio` are near-copies."""
    d = pairwise_distances(fake, real)
    nearest = d.argmin(axis=1)
    dist = d[np.arange(len(fake)), nearest]
    rr = pairwise_distances(real, real)
    np.fill_diagonal(rr, np.inf)
    own = rr.min(axis=1)
    rel = dist / np.maximum(own[nearest], 1e-12)
    return {"nearest": nearest.tolist(), "distance": dist.tolist(), "ratio": rel.tolist(),
            "near_copy": (rel < ratio).tolist(), "threshold_ratio": ratio,
            "n_near_copies": int((rel < ratio).sum())}
