"""Retrieval quality of an index against labelled queries: recall@k and mAP.

A query hits at k when at least one of its top-k results carries the query's label
(the usual "product found on the first page" measure). mAP is the mean over queries of
average precision over the whole ranked index (sklearn's `average_precision_score`
definition, computed here exactly from the stored vectors). Indexed items that are
byte-identical to the query (same sha256) are removed from its results: finding the
query itself is not retrieval.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sightwise.search.embed import collect_images, embed_records
from sightwise.search.store import SearchIndex

KS = (1, 5, 10)


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """AP of one ranking (ties broken by order): mean precision at each relevant hit.

    >>> average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]))
    0.8333333333333333
    """
    order = np.argsort(-scores, kind="stable")
    rel = relevant[order].astype(np.float64)
    if rel.sum() == 0:
        return float("nan")
    precision = np.cumsum(rel) / np.arange(1, len(rel) + 1)
    return float((precision * rel).sum() / rel.sum())


def retrieval_metrics(index: SearchIndex, queries: np.ndarray, labels: list,
                      sha256s: list[str], ks=KS) -> dict:
    """{"recall@k": ..., "map": ..., "n_queries": ...} for unit `queries` (Q, D)."""
    item_labels = np.array([str(it.get("label")) for it in index.items], dtype=object)
    item_sha = np.array([it.get("sha256", "") for it in index.items], dtype=object)
    kmax = max(ks)
    # Byte-identical items are dropped from a query's results, so ask for that many more.
    extra = max((int((item_sha == s).sum()) for s in sha256s), default=0)
    sims, ids = index.search(queries, min(len(index), kmax + extra) or 1)
    row_of = {it["id"]: r for r, it in enumerate(index.items)}
    hits = {k: 0 for k in ks}
    aps = []
    for q in range(len(queries)):
        own = item_sha == sha256s[q]
        ranked = [row_of[int(i)] for i in ids[q] if i >= 0 and not own[row_of[int(i)]]]
        top = item_labels[ranked[:kmax]] == str(labels[q])
        for k in ks:
            hits[k] += bool(top[:k].any())
        keep = ~own
        scores = index.vectors[keep] @ queries[q]
        ap = average_precision(scores, item_labels[keep] == str(labels[q]))
        if not np.isnan(ap):
            aps.append(ap)
    n = len(queries)
    out = {f"recall@{k}": hits[k] / n if n else float("nan") for k in ks}
    out["map"] = float(np.mean(aps)) if aps else float("nan")
    out["n_queries"] = n
    out["n_without_relevant"] = n - len(aps)
    return out


def evaluate_index(index: SearchIndex, predictor, queries: str | Path, *,
                   labels: str = "top", progress: bool = True, log=print) -> dict:
    """Embed the labelled query set with the index's bundle and score retrieval."""
    records = [r for r in collect_images(queries, labels) if r["label"] is not None]
    vectors, kept, errors = embed_records(predictor, records, progress=progress)
    for path, reason in errors:
        log(f"skipped {path}: {reason}")
    return retrieval_metrics(index, vectors, [r["label"] for r in kept],
                             [r["sha256"] for r in kept])
