"""PatchCore's memory bank, coreset and thresholds: numpy + FAISS only (no torch).

Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022. Patch
features of good images form a memory bank, reduced by greedy k-center coreset selection;
a test patch's anomaly score is its distance to the nearest bank entry, and an image's
score is its highest patch score. The paper's image-score reweighting (its Eq. 7) is not
applied: the plain maximum is what Anomalib and most follow-ups report.

The maximum can leave out a border of `border` patches (the heat map keeps them). Good
parts photographed with a visible rim or edge score highest there, and a maximum is
decided by one patch (measured in docs/experiments/2026-11-29-magnetic-tile-defaults.md).
Anomalib's default pipeline gets the same by a centre crop (256 -> 224), which also drops
the border from the heat map.
"""

from __future__ import annotations

import faiss
import numpy as np
from scipy.ndimage import binary_erosion


def kcenter_greedy(x: np.ndarray, k: int, *, seed: int = 0, proj_dim: int = 128) -> np.ndarray:
    """Indices of `k` rows chosen by greedy k-center (minimax facility location).

    Each step adds the point farthest from everything chosen so far (Sener & Savarese
    2018, as used by PatchCore). Distances are taken after a Johnson-Lindenstrauss Gaussian
    projection to `proj_dim` dimensions (PatchCore Sec. 3.2), which keeps the selection
    close while making each step cheaper. The first center is drawn with `seed`.
    """
    x = np.asarray(x, np.float32)
    n, d = x.shape
    k = int(min(max(k, 1), n))
    rng = np.random.default_rng(seed)
    z = x
    if proj_dim and d > proj_dim:
        proj = rng.standard_normal((d, proj_dim)).astype(np.float32) / np.sqrt(proj_dim)
        z = x @ proj
    sq = np.einsum("ij,ij->i", z, z)
    first = int(rng.integers(n))
    chosen = np.empty(k, np.int64)
    chosen[0] = first
    # Exact greedy, pruned by the triangle inequality (Elkan, ICML 2003): a point x whose
    # nearest chosen center a satisfies d(a, c) >= 2 d(x, a) cannot move closer to the new
    # center c, so only members of centers with d(a, c) < 2 * radius(a) are re-measured.
    # Radii are upper bounds (never shrunk), which keeps the pruning safe.
    centers = np.empty((k, z.shape[1]), np.float32)
    radius = np.zeros(k, np.float64)
    assign = np.zeros(n, np.int64)
    min_d = _sqdist(z, sq, z[first], sq[first])
    centers[0] = z[first]
    radius[0] = np.sqrt(min_d.max())
    for j in range(1, k):
        i = int(np.argmax(min_d))
        chosen[j], centers[j] = i, z[i]
        c_sq = np.sqrt(np.maximum(_sqdist(centers[:j], None, z[i], sq[i]), 0.0))
        near = c_sq < 2.0 * radius[:j] * (1 + 1e-4) + 1e-6
        idx = np.flatnonzero(near[assign])
        if idx.size > n // 4:  # pruning does not pay: one dense pass, no gather
            idx = np.arange(n)
            d = _sqdist(z, sq, z[i], sq[i])
        else:
            d = _sqdist(z[idx], sq[idx], z[i], sq[i])
        closer = d < min_d[idx]
        moved = idx[closer]
        min_d[moved] = d[closer]
        assign[moved] = j
        min_d[i] = 0.0
        radius[j] = np.sqrt(max(float(d[closer].max()) if moved.size else 0.0, 0.0))
    return chosen


def _sqdist(a: np.ndarray, a_sq: np.ndarray | None, b: np.ndarray, b_sq: float) -> np.ndarray:
    """Squared distances of rows of `a` to `b`: |a|^2 - 2ab + |b|^2 (one matrix-vector
    product)."""
    if a_sq is None:
        a_sq = np.einsum("ij,ij->i", a, a)
    return a_sq - 2.0 * (a @ b) + b_sq


def flatten_patches(features: np.ndarray) -> np.ndarray:
    """(N, C, h, w) feature maps -> (N*h*w, C) patch vectors, row-major over (n, y, x)."""
    n, c, h, w = features.shape
    return np.ascontiguousarray(features.transpose(0, 2, 3, 1).reshape(n * h * w, c), np.float32)


class PatchCore:
    """Memory-bank detector: `fit(features)` then `score(features)` (DESIGN.md: no fake
    training step). `features` are (N, C, h, w) locally aware patch feature maps."""

    def __init__(self, coreset: float = 0.1, *, seed: int = 0, proj_dim: int = 128,
                 threads: int | None = None, border: int = 0):
        if not 0.0 < coreset <= 1.0:
            raise ValueError(f"coreset ratio must be in (0, 1], got {coreset}")
        if border < 0:
            raise ValueError(f"border must be >= 0 patches, got {border}")
        self.border = int(border)
        self.coreset, self.seed, self.proj_dim = float(coreset), int(seed), int(proj_dim)
        self.threads = threads
        self.memory_bank: np.ndarray | None = None
        self._index = None

    def fit(self, features: np.ndarray, content: np.ndarray | None = None) -> PatchCore:
        """Bank the patches of (N, C, h, w) `features`; with `content` (N, h, w) bool, only
        the patches that lie on the image (not on a letterbox's mirrored fill)."""
        patches = flatten_patches(features) if features.ndim == 4 else np.asarray(features, np.float32)
        if content is not None:
            patches = patches[np.asarray(content, bool).reshape(-1)]
        if self.coreset < 1.0:
            k = max(1, int(round(self.coreset * len(patches))))
            patches = patches[kcenter_greedy(patches, k, seed=self.seed, proj_dim=self.proj_dim)]
        return self.set_bank(patches)

    def set_bank(self, bank: np.ndarray) -> PatchCore:
        self.memory_bank = np.ascontiguousarray(bank, np.float32)
        if self.threads:
            faiss.omp_set_num_threads(int(self.threads))
        self._index = faiss.IndexFlatL2(self.memory_bank.shape[1])
        self._index.add(self.memory_bank)
        return self

    def score(self, features: np.ndarray, content: np.ndarray | None = None,
              batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """-> (image_scores (N,), patch score maps (N, h, w)): Euclidean distance of each
        patch to its nearest memory-bank entry; image score = the map's maximum inside
        `border` (the whole map when the border would leave nothing). With `content`
        (N, h, w) bool the maximum is taken over the image's own patches, `border` patches
        in from its edges."""
        if self._index is None:
            raise RuntimeError("PatchCore.score called before fit")
        n, _, h, w = features.shape
        maps = np.empty((n, h, w), np.float32)
        for s in range(0, n, batch):
            chunk = features[s:s + batch]
            dist, _ = self._index.search(flatten_patches(chunk), 1)
            # IndexFlatL2 returns squared distances; clip tiny negatives from rounding.
            maps[s:s + len(chunk)] = np.sqrt(np.maximum(dist[:, 0], 0.0)).reshape(-1, h, w)
        if not n:
            return np.zeros(0, np.float32), maps
        if content is None:
            content = np.ones((n, h, w), bool)
        inner = [_inner(c, self.border) for c in np.asarray(content, bool)]
        return np.array([m[c].max() for m, c in zip(maps, inner, strict=True)], np.float32), maps


def _inner(content: np.ndarray, border: int) -> np.ndarray:
    """`content` (h, w) shrunk by `border` cells on every side (the map's edge counts as an
    edge); the whole content when that leaves nothing, the whole map when there is none."""
    if not content.any():
        return np.ones_like(content)
    if border:
        shrunk = binary_erosion(np.pad(content, border), iterations=border)[border:-border, border:-border]
        if shrunk.any():
            return shrunk
    return content


def far_threshold(good_scores: np.ndarray, rate: float) -> float:
    """The smallest threshold t (verdict: defect when score > t) whose false-alarm rate on
    `good_scores` is at most `rate`: the order statistic at ceil(n*(1-rate))."""
    s = np.sort(np.asarray(good_scores, np.float64))
    if len(s) == 0:
        raise ValueError("no held-out good scores to set a threshold on")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"false-alarm rate must be in [0, 1), got {rate}")
    allowed = int(np.floor(rate * len(s) + 1e-9))  # good images allowed above t
    return float(s[len(s) - 1 - allowed])


def f1_threshold(scores: np.ndarray, is_defect: np.ndarray) -> tuple[float, float]:
    """-> (threshold, F1): the cut (defect when score > t) that maximises F1 over the
    candidate cuts just below each observed score."""
    scores = np.asarray(scores, np.float64)
    y = np.asarray(is_defect, bool)
    best_t, best_f1 = float(scores.max()), 0.0
    for t in np.unique(scores):
        cut = np.nextafter(t, -np.inf)
        pred = scores > cut
        tp = float(np.sum(pred & y))
        f1 = 2 * tp / max(1.0, float(pred.sum() + y.sum()))
        if f1 > best_f1:
            best_t, best_f1 = float(cut), f1
    return best_t, best_f1
