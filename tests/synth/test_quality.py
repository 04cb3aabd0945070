"""KID, precision/recall/density/coverage and the memorisation check against references
written from the papers' definitions (plain loops), and on distributions whose answer is
known."""

from __future__ import annotations

import numpy as np
import pytest

from sightwise.synth.quality import kid, memorisation, mmd2_unbiased, prdc


def kid_reference(x, y):
    """Binkowski et al. 2018, Eq. for the unbiased MMD^2 estimator with
    k(a, b) = (a.b / d + 1)^3, summed pair by pair."""
    d = x.shape[1]

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def prdc_reference(real, fake, k):
    """Naeem et al. 2020, Eqs. 1-4 (precision/recall of Kynkaanniemi et al. 2019), by loops."""
    def radius(points, i):
        d = sorted(np.linalg.norm(points[i] - points[j]) for j in range(len(points)) if j != i)
        return d[k - 1]

    rr = [radius(real, i) for i in range(len(real))]
    fr = [radius(fake, j) for j in range(len(fake))]
    inside = [[np.linalg.norm(fake[j] - real[i]) <= rr[i] for j in range(len(fake))]
              for i in range(len(real))]
    precision = np.mean([any(inside[i][j] for i in range(len(real))) for j in range(len(fake))])
    recall = np.mean([any(np.linalg.norm(real[i] - fake[j]) <= fr[j] for j in range(len(fake)))
                      for i in range(len(real))])
    density = sum(sum(row) for row in inside) / (k * len(fake))
    coverage = np.mean([any(row) for row in inside])
    return precision, recall, density, coverage


def test_mmd2_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 5)), rng.normal(0.3, 1.2, size=(9, 5))
    assert mmd2_unbiased(x, y) == pytest.approx(kid_reference(x, y), rel=1e-10, abs=1e-12)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(300, 16))
    same = kid(real, rng.normal(size=(300, 16)), subsets=50)
    shifted = kid(real, rng.normal(0.5, 1.0, size=(300, 16)), subsets=50)
    assert same["low"] <= 0.0 <= same["high"]  # unbiased: 0 lies in the interval
    assert abs(same["value"]) < 0.1 * shifted["value"]
    assert shifted["low"] > 0.0


def test_prdc_matches_the_definitions():
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(25, 3)), rng.normal(0.4, 1.3, size=(20, 3))
    got = prdc(real, fake, k=3)
    ref = prdc_reference(real, fake, 3)
    assert (got["precision"], got["recall"], got["density"], got["coverage"]) == pytest.approx(ref)


def test_coverage_and_density_of_identical_distributions():
    """Naeem et al., Sec. 3.2: for identical distributions E[density] = 1 and
    E[coverage] = 1 - prod_{i=1..k} (N - i) / (N + M - i) (N real, M fake samples)."""
    rng = np.random.default_rng(3)
    n = m = 200
    k = 5
    cov, dens = [], []
    for _ in range(10):
        res = prdc(rng.normal(size=(n, 4)), rng.normal(size=(m, 4)), k=k)
        cov.append(res["coverage"])
        dens.append(res["density"])
    expected = 1 - np.prod([(n - i) / (n + m - i) for i in range(1, k + 1)])
    assert np.mean(cov) == pytest.approx(expected, abs=0.02)
    assert np.mean(dens) == pytest.approx(1.0, abs=0.08)


def test_memorisation_flags_copies_and_spares_new_samples():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(60, 8))
    copies = real[:10] + rng.normal(0, 0.01, size=(10, 8))
    fresh = rng.normal(size=(30, 8))
    res = memorisation(real, np.concatenate([copies, fresh]))
    assert res["nearest"][:10] == list(range(10))
    assert all(res["near_copy"][:10])
    assert sum(res["near_copy"][10:]) <= 3
