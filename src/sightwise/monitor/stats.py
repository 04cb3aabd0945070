"""The statistical tests a window runs against the reference, and interval helpers.

KS and chi-square are scipy's own (`ks_2samp`, `chi2_contingency`); the MMD permutation
test is written here because it reuses the reference block of the kernel matrix across
windows and runs all permutations as one matrix product.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as st


def ks_columns(ref: np.ndarray, window: np.ndarray) -> tuple[float, list[float]]:
    """Two-sample KS on every column; (Bonferroni-corrected min p, per-column p)."""
    ps = [float(st.ks_2samp(ref[:, j], window[:, j]).pvalue) for j in range(ref.shape[1])]
    return min(1.0, len(ps) * min(ps)), ps


def chi2_counts(ref_counts, window_counts) -> tuple[float, float]:
    """Chi-square test of homogeneity on a 2 x C table of class counts: (statistic, p).

    Classes absent from both rows are dropped (they carry no information and would make
    the expected count zero). No Yates correction, also for two classes.
    """
    table = np.array([ref_counts, window_counts], np.float64)
    table = table[:, table.sum(0) > 0]
    if table.shape[1] < 2:
        return 0.0, 1.0  # every image in one class on both sides: nothing to compare
    res = st.chi2_contingency(table, correction=False)
    return float(res.statistic), float(res.pvalue)


def gaussian_kernel(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d2 = np.maximum(np.sum(a ** 2, 1)[:, None] + np.sum(b ** 2, 1)[None, :] - 2 * a @ b.T, 0)
    return np.exp(-d2 / (2.0 * bandwidth ** 2))


def mmd2_unbiased(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    """Gretton et al. (JMLR 2012) unbiased MMD^2 from the three kernel blocks."""
    n, m = len(kxx), len(kyy)
    sxx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(sxx + syy - 2 * kxy.mean())


def mmd_permutation_test(ref: np.ndarray, window: np.ndarray, bandwidth: float, *,
                         permutations: int = 1000, seed: int = 0, stop_after: int = 10,
                         kxx: np.ndarray | None = None) -> tuple[float, float]:
    """(MMD^2, permutation p-value) of `window` against `ref` with a Gaussian kernel.

    Random relabellings of the pooled points are drawn until `stop_after` of them reach the
    observed MMD^2 (then p = stop_after / draws: Besag & Clifford's sequential p-value,
    Biometrika 1991, exact like the fixed-count one) or `permutations` are done (then
    p = (1 + exceedances) / (1 + permutations), never 0). A clean window stops after ~100
    draws; only a small p needs them all. `kxx` is the reference's own kernel block.
    """
    n, m = len(ref), len(window)
    if n < 2 or m < 2:
        return 0.0, 1.0
    kxx = gaussian_kernel(ref, ref, bandwidth) if kxx is None else kxx
    kxy = gaussian_kernel(ref, window, bandwidth)
    kyy = gaussian_kernel(window, window, bandwidth)
    observed = mmd2_unbiased(kxx, kyy, kxy)
    k = np.block([[kxx, kxy], [kxy.T, kyy]]).astype(np.float32)
    rng = np.random.default_rng(seed)
    exceed, done = 0, 0
    while done < permutations:  # in chunks: memory stays ~chunk x (n + m) floats
        b = min(100, permutations - done)
        ind = np.zeros((b, n + m), np.float32)  # 1 marks the points relabelled "window"
        picks = np.argsort(rng.random((b, n + m)), axis=1)[:, :m]
        np.put_along_axis(ind, picks, 1.0, axis=1)
        hits = np.cumsum(_mmd2_of_labels(k, ind, n, m) >= observed - 1e-9) + exceed
        if stop_after and hits[-1] >= stop_after:
            draws = done + int(np.argmax(hits >= stop_after)) + 1
            return observed, stop_after / draws
        exceed, done = int(hits[-1]), done + b
    return observed, (1 + exceed) / (permutations + 1)


def _mmd2_of_labels(k: np.ndarray, ind: np.ndarray, n: int, m: int) -> np.ndarray:
    """Unbiased MMD^2 for each row of `ind` (1 = second sample); the kernel's diagonal is 1."""
    total = float(k.sum())
    row = k.sum(1)
    syy_all = np.einsum("bi,bi->b", ind @ k, ind)     # sum of K over window x window
    sxy = ind @ row - syy_all                         # window x reference
    sxx_all = total - syy_all - 2 * sxy               # reference x reference
    return ((sxx_all - n) / (n * (n - 1)) + (syy_all - m) / (m * (m - 1))
            - 2 * sxy / (n * m))


def outlier_test(n_outliers: int, n: int, ref_outliers: int, ref_n: int) -> float:
    """One-sided p: at least `n_outliers` of `n` window images beyond the threshold, when
    `ref_outliers` of `ref_n` reference images were (out of fold).

    A binomial test against the reference's rate taken as exact would ignore that the rate
    is itself estimated from a few hundred images (a 5 % rate from 300 images is 5 +- 1.3 %),
    and a window of 100 then false-alarms several times too often. So the rate carries its
    uncertainty: the window's count is referred to the beta-binomial predictive
    distribution under a Jeffreys prior, Beta(ref_outliers + 1/2, ref_n - ref_outliers + 1/2).
    """
    if n == 0:
        return 1.0
    a, b = ref_outliers + 0.5, ref_n - ref_outliers + 0.5
    return float(st.betabinom.sf(int(n_outliers) - 1, int(n), a, b))


def family_p(p_values: dict[str, float]) -> float:
    """Bonferroni over the window's tests: below alpha for a clean window with probability
    at most alpha, whatever the dependence between the tests."""
    ps = [p for p in p_values.values() if p is not None and not math.isnan(p)]
    return min(1.0, len(ps) * min(ps)) if ps else 1.0


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95 % by default).

    >>> [round(x, 4) for x in wilson_interval(0, 300)]
    [0.0, 0.0126]
    """
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)
