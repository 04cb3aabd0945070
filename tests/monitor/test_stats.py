"""The window's statistical tests against scipy's, brute force and their null behaviour."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as st

from sightwise.monitor.stats import (
    chi2_counts,
    family_p,
    gaussian_kernel,
    ks_columns,
    mmd2_unbiased,
    mmd_permutation_test,
    outlier_test,
    wilson_interval,
)


def test_ks_columns_is_scipys_per_column_with_bonferroni():
    rng = np.random.default_rng(0)
    ref = rng.dirichlet([2, 1, 1], 150)
    win = rng.dirichlet([1, 1, 2], 60)
    fam, ps = ks_columns(ref, win)
    want = [st.ks_2samp(ref[:, j], win[:, j]).pvalue for j in range(3)]
    assert ps == pytest.approx(want, rel=1e-12)
    assert fam == pytest.approx(min(1.0, 3 * min(want)))


def test_chi2_counts_matches_scipy_and_the_formula():
    ref, win = np.array([40, 25, 0, 35]), np.array([10, 20, 0, 5])
    stat, p = chi2_counts(ref, win)
    table = np.array([[40, 25, 35], [10, 20, 5]], float)  # the empty class dropped
    res = st.chi2_contingency(table, correction=False)
    assert (stat, p) == pytest.approx((res.statistic, res.pvalue))
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    by_hand = ((table - expected) ** 2 / expected).sum()
    assert stat == pytest.approx(by_hand)
    assert p == pytest.approx(st.chi2.sf(by_hand, 2))
    assert chi2_counts([5, 0], [7, 0]) == (0.0, 1.0)  # one class on both sides


def test_mmd2_unbiased_equals_the_double_sum():
    rng = np.random.default_rng(1)
    x, y, h = rng.normal(size=(7, 3)), rng.normal(0.5, 1, size=(5, 3)), 1.3

    def k(a, b):
        return np.exp(-np.sum((a - b) ** 2) / (2 * h * h))

    xx = sum(k(a, b) for a, b in itertools.permutations(x, 2)) / (7 * 6)
    yy = sum(k(a, b) for a, b in itertools.permutations(y, 2)) / (5 * 4)
    xy = sum(k(a, b) for a in x for b in y) / 35
    got = mmd2_unbiased(gaussian_kernel(x, x, h), gaussian_kernel(y, y, h), gaussian_kernel(x, y, h))
    assert got == pytest.approx(xx + yy - 2 * xy, rel=1e-9)


def test_mmd_permutation_p_against_a_brute_force_permutation_count():
    """Our batched relabelling agrees with a plain loop over random relabellings: both
    estimate the same permutation p (binomial noise of 2000 draws)."""
    rng = np.random.default_rng(2)
    x, y, h = rng.normal(size=(30, 2)), rng.normal(0.3, 1, size=(20, 2)), 1.0
    obs, p = mmd_permutation_test(x, y, h, permutations=2000, stop_after=0, seed=3)
    pooled = np.vstack([x, y])
    hits = 0
    for _ in range(2000):
        perm = rng.permutation(50)
        a, b = pooled[perm[:30]], pooled[perm[30:]]
        stat = mmd2_unbiased(gaussian_kernel(a, a, h), gaussian_kernel(b, b, h),
                             gaussian_kernel(a, b, h))
        hits += stat >= obs - 1e-9
    brute = (1 + hits) / 2001
    assert abs(p - brute) < 4 * np.sqrt(brute * (1 - brute) / 2000) + 0.005


def test_mmd_p_values_are_uniform_under_h0_and_small_under_a_shift():
    rng = np.random.default_rng(4)
    ps = []
    for i in range(120):
        x, y = rng.normal(size=(40, 4)), rng.normal(size=(30, 4))
        ps.append(mmd_permutation_test(x, y, 2.0, permutations=200, seed=i)[1])
    # Kolmogorov-Smirnov against U(0, 1): the permutation p is (super-)uniform under H0.
    assert st.kstest(ps, "uniform").pvalue > 0.001
    lo, hi = wilson_interval(sum(p < 0.2 for p in ps), len(ps), z=3.3)
    assert lo <= 0.2 <= hi
    shifted = [mmd_permutation_test(rng.normal(size=(40, 4)), rng.normal(1.0, 1, (30, 4)), 2.0,
                                    permutations=500, seed=i)[1] for i in range(10)]
    assert max(shifted) < 0.01


def test_sequential_stop_gives_the_same_decisions_as_all_permutations():
    rng = np.random.default_rng(5)
    for i in range(15):
        x, y = rng.normal(size=(40, 3)), rng.normal(0.15 * (i % 4), 1, (30, 3))
        _, full = mmd_permutation_test(x, y, 1.5, permutations=1000, stop_after=0, seed=i)
        _, seq = mmd_permutation_test(x, y, 1.5, permutations=1000, stop_after=10, seed=i)
        assert (full < 0.0025) == (seq < 0.0025)


def test_outlier_test_is_the_beta_binomial_tail():
    a, b = 15 + 0.5, 300 - 15 + 0.5
    assert outlier_test(12, 100, 15, 300) == pytest.approx(st.betabinom.sf(11, 100, a, b))
    assert outlier_test(0, 100, 15, 300) == pytest.approx(1.0)
    assert outlier_test(0, 0, 15, 300) == 1.0
    # Wider than the binomial test at the point rate: the rate's uncertainty is counted.
    assert outlier_test(12, 100, 15, 300) > st.binomtest(12, 100, 0.05, alternative="greater").pvalue


def test_outlier_test_false_alarm_rate_over_random_references():
    """Simulated: references of 300 with a true 5 % rate give their estimate; windows of 100
    from the same law. Rejections at 0.01 stay within the binomial interval of 0.01."""
    rng = np.random.default_rng(6)
    k_ref = rng.binomial(300, 0.05, 4000)
    k_win = rng.binomial(100, 0.05, 4000)
    rejected = sum(outlier_test(k, 100, kr, 300) < 0.01 for k, kr in zip(k_win, k_ref, strict=True))
    assert wilson_interval(rejected, 4000)[0] <= 0.01


def test_family_p_is_bonferroni_over_the_tests_that_ran():
    assert family_p({"a": 0.01, "b": 0.5, "c": None}) == pytest.approx(0.02)
    assert family_p({"a": 0.6, "b": 0.9}) == 1.0
    assert family_p({}) == 1.0


@pytest.mark.parametrize("k,n", [(0, 300), (3, 10), (7, 7), (50, 1000)])
def test_wilson_interval_matches_scipy(k, n):
    ci = st.binomtest(k, n).proportion_ci(method="wilson")
    assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
