"""Active-learning order: greedy k-center and margin against brute-force references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sightwise.label.order import (
    density,
    diverse_margin,
    is_cold,
    kcenter_greedy,
    margins,
    probe_probabilities,
    select,
    smallest_margin,
    typical_kcenter,
)


def brute_kcenter(x, k, selected):
    """Greedy k-center written the slow, obvious way (Python loops, exact norms)."""
    chosen = list(selected)
    picks = []
    candidates = [i for i in range(len(x)) if i not in chosen]
    for _ in range(k):
        if not chosen:
            mean = x[candidates].mean(0)
            best = min(candidates, key=lambda i: (np.linalg.norm(x[i] - mean), i))
        else:
            def radius(i):
                return min(np.linalg.norm(x[i] - x[c]) for c in chosen)
            best = max((i for i in candidates if i not in picks), key=lambda i: (radius(i), -i))
        picks.append(best)
        chosen.append(best)
    return picks


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_selected", [0, 1, 4])
def test_kcenter_matches_brute_force(seed, n_selected):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(40, 5))
    selected = rng.choice(40, n_selected, replace=False).tolist()
    assert kcenter_greedy(x, 8, selected) == brute_kcenter(x, 8, selected)


def covering_radius(x, centres):
    return max(min(np.linalg.norm(x[i] - x[c]) for c in centres) for i in range(len(x)))


def test_kcenter_radius_is_within_twice_the_optimum():
    """Gonzalez's bound: greedy's covering radius <= 2 x the best possible (exhaustive)."""
    rng = np.random.default_rng(3)
    for _ in range(5):
        x = rng.normal(size=(9, 2))
        first = kcenter_greedy(x, 1)
        picks = first + kcenter_greedy(x, 2, selected=first)

        best = min(covering_radius(x, c) for c in itertools.combinations(range(9), 3))
        assert covering_radius(x, picks) <= 2 * best + 1e-9


def test_kcenter_respects_candidates_and_never_repeats():
    x = np.zeros((6, 3))  # all duplicates: distances are 0 everywhere
    picks = kcenter_greedy(x, 4, selected=[0], candidates=[1, 2, 3, 4])
    assert sorted(picks) == [1, 2, 3, 4]
    assert kcenter_greedy(x, 0) == []


def test_margin_matches_sorting_each_row():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(5), size=50)
    expected = [sorted(row)[-1] - sorted(row)[-2] for row in p]
    assert margins(p) == pytest.approx(expected)
    cand = list(range(0, 50, 2))
    brute = sorted(cand, key=lambda i: (expected[i], i))[:7]
    assert smallest_margin(p, 7, cand) == brute


def test_diverse_margin_picks_among_the_least_certain():
    rng = np.random.default_rng(2)
    x, p = rng.normal(size=(100, 4)), rng.dirichlet(np.ones(3), size=100)
    picks = diverse_margin(x, p, 5, selected=[0, 1], candidates=range(2, 100), pool_factor=4)
    shortlist = set(smallest_margin(p, 20, range(2, 100)))
    assert len(set(picks)) == 5 and set(picks) <= shortlist


def test_auto_explores_until_each_class_has_a_few_labels():
    assert is_cold([0, 0, 1], 3) and not is_cold([0, 0, 0, 1, 1, 1, 2, 2, 2], 3)
    assert not is_cold([0] * 9, 3)  # few x classes labels: trust the model even so
    rng = np.random.default_rng(0)
    x, p = rng.normal(size=(30, 3)), rng.dirichlet(np.ones(3), size=30)
    picks, how = select("auto", 3, candidates=range(3, 30), rng=rng, emb=x, probs=p,
                        selected=[0, 1, 2], labels=[0, 1, 2], n_classes=3)
    assert how == "typical k-center"
    assert picks == typical_kcenter(x, 3, [0, 1, 2], range(3, 30), density(x))
    picks, how = select("auto", 3, candidates=range(9, 30), rng=rng, emb=x, probs=p,
                        selected=range(9), labels=[0, 1, 2] * 3, n_classes=3)
    assert how == "margin+diversity"
    with pytest.raises(ValueError, match="needs embeddings"):
        select("kcenter", 2, candidates=[0, 1, 2], rng=rng)


def test_probe_probabilities_cover_every_class_column():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-2, 1, (10, 3)), rng.normal(2, 1, (10, 3))])
    p = probe_probabilities(x, list(range(20)), [0] * 10 + [2] * 10, n_classes=3)
    assert p.shape == (20, 3) and np.allclose(p[:, 1], 0) and np.allclose(p.sum(1), 1)
    assert (p.argmax(1)[:10] == 0).mean() > 0.8
    assert probe_probabilities(x, [0, 1], [0, 0], 3) is None


def test_density_matches_brute_force_and_subsampling_stays_exact_on_its_sample():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, 6))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    brute = [np.mean(sorted(x[i] @ x[j] for j in range(60) if j != i)[-5:]) for i in range(60)]
    assert density(x, k=5) == pytest.approx(brute)
    sub = density(x, k=5, max_ref=30, seed=1)
    ref = np.sort(np.random.default_rng(1).choice(60, 30, replace=False))
    expected = [np.mean(sorted(x[i] @ x[j] for j in ref if j != i)[-5:]) for i in range(60)]
    assert sub == pytest.approx(expected)


def test_typical_kcenter_leaves_the_outliers_out():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(0, 0.1, (40, 3)) + [1, 0, 0], rng.normal(0, 3, (4, 3))])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    dens = density(x, k=5)
    plain = kcenter_greedy(x, 4, selected=[0])
    typical = typical_kcenter(x, 4, [0], range(1, 44), dens)
    assert set(plain) & set(range(40, 44))  # farthest-first goes for the outliers
    assert not set(typical) & set(range(40, 44))
    picks, how = select("auto", 3, candidates=range(1, 44), rng=rng, emb=x, selected=[0],
                        labels=[0], n_classes=2, dens=dens)
    assert how == "typical k-center" and picks == typical_kcenter(x, 3, [0], range(1, 44), dens)
