"""Coreset against brute-force k-center; FAISS scores against exact NN; thresholds."""

import numpy as np
import pytest

from sightwise.anomaly.patchcore import PatchCore, f1_threshold, far_threshold, kcenter_greedy


def brute_kcenter(x: np.ndarray, k: int, first: int) -> list[int]:
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    chosen, min_d = [first], d[first].copy()
    for _ in range(k - 1):
        i = int(np.argmax(min_d))
        chosen.append(i)
        min_d = np.minimum(min_d, d[i])
    return chosen


@pytest.mark.parametrize("seed", [0, 3])
def test_kcenter_matches_brute_force(seed):
    rng = np.random.default_rng(10 + seed)
    # Clustered data, so the triangle-inequality pruning path is exercised too.
    x = (rng.normal(size=(12, 16)) * 5)[rng.integers(12, size=400)] + rng.normal(size=(400, 16))
    x = x.astype(np.float32)
    first = int(np.random.default_rng(seed).integers(400))
    got = kcenter_greedy(x, 40, seed=seed, proj_dim=0).tolist()
    assert got == brute_kcenter(x.astype(np.float64), 40, first)


def test_kcenter_projection_is_kcenter_in_projected_space():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 64)).astype(np.float32)
    got = kcenter_greedy(x, 25, seed=1, proj_dim=8)
    r = np.random.default_rng(1)
    proj = r.standard_normal((64, 8)).astype(np.float32) / np.sqrt(8)
    first = int(r.integers(300))
    assert got.tolist() == brute_kcenter((x @ proj).astype(np.float64), 25, first)


def test_score_is_exact_nearest_neighbour_distance():
    rng = np.random.default_rng(2)
    train = rng.normal(size=(5, 6, 4, 4)).astype(np.float32)
    test = rng.normal(size=(3, 6, 4, 4)).astype(np.float32)
    core = PatchCore(1.0).fit(train)
    scores, maps = core.score(test)
    bank = train.transpose(0, 2, 3, 1).reshape(-1, 6)
    q = test.transpose(0, 2, 3, 1).reshape(-1, 6)
    exact = np.sqrt(((q[:, None] - bank[None]) ** 2).sum(-1)).min(1).reshape(3, 4, 4)
    np.testing.assert_allclose(maps, exact, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores, exact.reshape(3, -1).max(1), rtol=1e-4)
    assert len(PatchCore(0.25).fit(train).memory_bank) == 20


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.1])
def test_far_threshold_gives_target_rate(rate):
    rng = np.random.default_rng(4)
    held = rng.normal(size=1000)
    t = far_threshold(held, rate)
    assert np.mean(held > t) == pytest.approx(rate, abs=1e-9)
    fresh = rng.normal(size=200_000)  # same distribution: the rate carries over
    assert abs(np.mean(fresh > t) - rate) < 0.01


def test_f1_threshold():
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.25])
    y = np.array([0, 0, 0, 1, 1, 1], bool)
    t, f1 = f1_threshold(s, y)
    assert 0.2 <= t < 0.25 and f1 == pytest.approx(2 * 3 / (3 + 4))  # 3 TP, 1 FP


def test_image_score_leaves_out_the_border_but_the_map_keeps_it():
    rng = np.random.default_rng(3)
    bank = rng.standard_normal((50, 4)).astype(np.float32)
    feats = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    feats[0, :, 0, 3] = 40.0  # far from every bank entry, on the top row
    plain, maps = PatchCore(1.0).set_bank(bank).score(feats)
    inner, maps2 = PatchCore(1.0, border=2).set_bank(bank).score(feats)
    np.testing.assert_array_equal(maps, maps2)  # heat maps keep the border
    assert plain[0] == maps[0].max()
    np.testing.assert_allclose(inner, maps[:, 2:6, 2:6].reshape(2, -1).max(axis=1))
    assert inner[0] < plain[0]
    whole, _ = PatchCore(1.0, border=4).set_bank(bank).score(feats)  # would leave nothing
    np.testing.assert_array_equal(whole, plain)
    with pytest.raises(ValueError, match="border"):
        PatchCore(1.0, border=-1)


def test_content_grids_limit_the_bank_and_the_image_score():
    # A letterboxed image's mirrored fill is neither banked nor scored: the bank holds only
    # content patches, and the image score is the maximum over the content shrunk by the
    # border (the map still covers the whole input).
    rng = np.random.default_rng(5)
    feats = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    content = np.zeros((2, 8, 8), bool)
    content[0, 2:6, :] = True  # a wide image: rows 2-5
    content[1, :, 1:7] = True  # a tall one: columns 1-6
    core = PatchCore(1.0, border=1).fit(feats, content)
    expected_bank = feats.transpose(0, 2, 3, 1)[content]
    np.testing.assert_array_equal(core.memory_bank, expected_bank)
    test = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    scores, maps = core.score(test, content)
    q = test.transpose(0, 2, 3, 1).reshape(-1, 3)
    exact = np.sqrt(((q[:, None] - expected_bank[None]) ** 2).sum(-1)).min(1).reshape(2, 8, 8)
    np.testing.assert_allclose(maps, exact, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores, [exact[0, 3:5, 1:7].max(), exact[1, 1:7, 2:6].max()], rtol=1e-5)
    # a border that would leave nothing falls back to the whole content
    thin = np.zeros((1, 8, 8), bool)
    thin[0, 4, :] = True
    s, m = PatchCore(1.0, border=2).set_bank(expected_bank).score(test[:1], thin)
    assert s[0] == pytest.approx(m[0, 4].max())
