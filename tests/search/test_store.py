"""SearchIndex against exact search: flat equals brute-force numpy cosine top-k; HNSW
recall against it; add/remove; persistence; bundle refusal."""

from __future__ import annotations

import numpy as np
import pytest

from sightwise.search.store import HnswParams, IndexError_, SearchIndex

BUNDLE = {"ref": "b", "bundle_json_sha256": "a" * 64}


def _unit(rng, n, d=32):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _exact(base, queries, k):
    sims = queries @ base.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, 1), order


def _records(n, start=0):
    return [{"path": f"/img/{i}.png", "label": str(i % 3), "sha256": f"{i:064x}"}
            for i in range(start, start + n)]


def test_flat_equals_brute_force():
    rng = np.random.default_rng(0)
    base, q = _unit(rng, 500), _unit(rng, 40)
    idx = SearchIndex.create(32, BUNDLE, kind="flat")
    idx.add(base, _records(500))
    sims, ids = idx.search(q, 10)
    ref_sims, ref_ids = _exact(base, q, 10)
    np.testing.assert_array_equal(ids, ref_ids)  # ids are row numbers here
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)


def test_auto_picks_hnsw_above_the_limit():
    assert SearchIndex.create(8, BUNDLE, n_expected=10, flat_limit=100).kind == "flat"
    assert SearchIndex.create(8, BUNDLE, n_expected=100, flat_limit=100).kind == "hnsw"


def test_hnsw_recall_against_exact():
    rng = np.random.default_rng(1)
    # Clustered data, like embeddings (uniform random high-d vectors are HNSW's worst case).
    centres = _unit(rng, 50)
    base = centres[rng.integers(0, 50, 3000)] + 0.3 * _unit(rng, 3000)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    q = base[rng.choice(3000, 100, replace=False)] + 0.05 * _unit(rng, 100)
    idx = SearchIndex.create(32, BUNDLE, kind="hnsw", hnsw=HnswParams(16, 100, 64))
    idx.add(base, _records(3000))
    _, ids = idx.search(q, 10)
    _, ref = _exact(base, (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32), 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, ref, strict=True)])
    assert recall >= 0.95


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_add_remove_matches_exact_on_what_remains(kind, tmp_path):
    rng = np.random.default_rng(2)
    a, b, q = _unit(rng, 200), _unit(rng, 100), _unit(rng, 20)
    idx = SearchIndex.create(32, BUNDLE, kind=kind, hnsw=HnswParams(16, 200, 256))
    assert idx.add(a, _records(200)) == list(range(200))
    assert idx.add(b, _records(100, 200)) == list(range(200, 300))
    gone = list(range(0, 300, 3))
    assert idx.remove(gone) == 100 and len(idx) == 200
    idx.save(tmp_path / "ix")
    again = SearchIndex.load(tmp_path / "ix")
    keep = [i for i in range(300) if i % 3]
    base = np.concatenate([a, b])[keep]
    sims, ids = again.search(q, 5)
    ref_sims, ref_rows = _exact(base, q, 5)
    np.testing.assert_array_equal(ids, np.array(keep)[ref_rows])
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)
    assert not set(ids.ravel()) & set(gone)
    assert [p.name for p in (tmp_path / "ix").iterdir() if p.name.startswith(".")] == []
    # ids stay stable after reload: the next add continues from next_id
    assert again.add(_unit(rng, 1), _records(1, 300)) == [300]


def test_matches_carry_metadata():
    rng = np.random.default_rng(3)
    base = _unit(rng, 10)
    idx = SearchIndex.create(32, BUNDLE, kind="flat")
    idx.add(base, _records(10))
    m = idx.matches(base[4:5], 3)[0]
    assert m[0]["rank"] == 1 and m[0]["path"] == "/img/4.png"
    assert m[0]["similarity"] == pytest.approx(1.0, abs=1e-5)


def test_another_bundle_is_refused():
    idx = SearchIndex.create(8, BUNDLE)
    idx.check_bundle("a" * 64)
    with pytest.raises(IndexError_, match="built with bundle"):
        idx.check_bundle("b" * 64, "other")


def test_load_refuses_mismatched_files(tmp_path):
    rng = np.random.default_rng(4)
    idx = SearchIndex.create(32, BUNDLE, kind="flat")
    idx.add(_unit(rng, 5), _records(5))
    idx.save(tmp_path)
    np.save(tmp_path / "vectors.npy", _unit(rng, 4))
    with pytest.raises(IndexError_, match="disagree"):
        SearchIndex.load(tmp_path)
