"""recall@k and mAP against a reference computed by hand (sklearn's average precision)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from sightwise.search.evaluate import retrieval_metrics
from sightwise.search.store import SearchIndex


def _reference(base, labels, shas, queries, qlabels, qshas, ks=(1, 5, 10)):
    recalls = {k: [] for k in ks}
    aps = []
    for q, ql, qs in zip(queries, qlabels, qshas, strict=True):
        keep = np.array([s != qs for s in shas])
        sims = base[keep] @ q
        rel = np.array(labels)[keep] == ql
        order = np.argsort(-sims)
        for k in ks:
            recalls[k].append(rel[order[:k]].any())
        if rel.any():
            aps.append(average_precision_score(rel, sims))
    out = {f"recall@{k}": float(np.mean(v)) for k, v in recalls.items()}
    return {**out, "map": float(np.mean(aps))}


def test_against_sklearn_reference():
    rng = np.random.default_rng(0)
    n, d = 300, 16
    base = rng.standard_normal((n, d)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    labels = [str(i) for i in rng.integers(0, 8, n)]
    shas = [f"{i:064x}" for i in range(n)]
    queries = base[:40] + 0.5 * rng.standard_normal((40, d)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    qlabels = labels[:40]
    # Half the queries are byte-identical to an indexed item (same sha256): excluded.
    qshas = shas[:20] + [f"q{i}" for i in range(20)]
    idx = SearchIndex.create(d, {"ref": "b"}, kind="flat")
    idx.add(base, [{"path": str(i), "label": lab, "sha256": s}
                   for i, (lab, s) in enumerate(zip(labels, shas, strict=True))])
    got = retrieval_metrics(idx, queries, qlabels, qshas)
    ref = _reference(base, labels, shas, queries, qlabels, qshas)
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert got["n_queries"] == 40


def test_own_copy_is_not_a_hit():
    base = np.eye(3, dtype=np.float32)
    idx = SearchIndex.create(3, {"ref": "b"}, kind="flat")
    idx.add(base, [{"path": "a", "label": "x", "sha256": "s0"},
                   {"path": "b", "label": "y", "sha256": "s1"},
                   {"path": "c", "label": "y", "sha256": "s2"}])
    got = retrieval_metrics(idx, base[:1], ["x"], ["s0"], ks=(1, 2))
    assert got["recall@1"] == 0.0 and got["recall@2"] == 0.0
    assert got["n_without_relevant"] == 1
