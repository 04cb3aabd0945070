"""`sightwise data audit`: label errors, conflicting near-duplicates, leakage, outliers and
class balance, from frozen features.

Label errors come from confident learning (confident.py) on out-of-fold probabilities: a
logistic-regression probe trained on k-1 folds predicts the k-th, so no image is judged by
a model that saw its (possibly wrong) label. Near-duplicates come from an exact cosine range
search (sightwise.search.dupes) over centred, unit-length features: a pair with different
labels is a labelling error by construction (one of the two is wrong), a pair across splits
is leakage. Outliers are images whose mean distance to their 5 nearest neighbours is far
above the rest (robust z-score over the median and MAD).

Contract (issue #19): the JSON has ``{"suspects": [{"path", "given", "suggested", "score"}],
...}``, most suspicious first.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sightwise.core import is_imbalanced
from sightwise.label.confident import find_label_issues
from sightwise.label.features import Features
from sightwise.label.order import centred_unit
from sightwise.types import Sample

DEFAULT_FOLDS = 5
PROBE_C = 0.03  # on centred features over one global scale (probe.py); NEU 5 % noise: see docs
DUP_THRESHOLD = 0.95
OUTLIER_K = 5
OUTLIER_Z = 6.0
HINT_SHARE = 0.03  # `train` mentions the audit above this share of suspected labels


def scaled(x: np.ndarray) -> np.ndarray:
    """Centred features over one global scale (the probe's preparation, probe.py)."""
    x = np.asarray(x, np.float64)
    mu = x.mean(0)
    scale = float(x.std(0).mean()) or 1.0
    return (x - mu) / scale


def oof_probabilities(x: np.ndarray, y: np.ndarray, n_classes: int, *, folds: int = DEFAULT_FOLDS,
                      seed: int = 0, C: float = PROBE_C) -> tuple[np.ndarray, int]:
    """(out-of-fold probabilities (n, C), folds used). Folds are stratified. A class with
    fewer images than folds cannot be in every fold: its images are still predicted, by
    models that may never have seen the class (so a class of one image is always
    suspect, which is what a single image of a class deserves)."""
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y, np.int64)
    k = int(max(2, min(folds, np.bincount(y, minlength=n_classes).max())))
    xs = scaled(x)
    probs = np.zeros((len(y), n_classes))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        splits = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(xs, y))
    for train, test in splits:
        lr = LogisticRegression(C=C, max_iter=1000, random_state=seed)
        lr.fit(xs[train], y[train])
        probs[np.ix_(test, lr.classes_)] = lr.predict_proba(xs[test])
    return probs, k


def _brief(s: Sample, classes: list[str]) -> dict:
    return {"path": s.source, "label": classes[s.label], "split": s.split}


def near_duplicates(unit: np.ndarray, samples: list[Sample], classes: list[str],
                    threshold: float = DUP_THRESHOLD) -> tuple[list[dict], list[dict]]:
    """(pairs with different labels, pairs across splits), each most similar first.
    Byte-identical files count as similarity 1 whatever their features."""
    from sightwise.search.dupes import similar_pairs

    pairs = {(i, j): s for i, j, s in similar_pairs(unit, threshold)}
    by_hash: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        if s.sha256:
            by_hash.setdefault(s.sha256, []).append(i)
    for group in by_hash.values():
        for a in range(len(group)):
            for b in range(a + 1, len(group)):
                pairs[(group[a], group[b])] = 1.0
    conflicts, leakage = [], []
    for (i, j), sim in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0])):
        a, b = samples[i], samples[j]
        rec = {"a": _brief(a, classes), "b": _brief(b, classes), "similarity": round(float(sim), 4)}
        if a.label != b.label:
            conflicts.append(rec)
        if a.split and b.split and a.split != b.split:
            leakage.append(rec)
    return conflicts, leakage


def outlier_scores(unit: np.ndarray, k: int = OUTLIER_K) -> np.ndarray:
    """Robust z-score of each image's mean distance to its k nearest neighbours."""
    n = len(unit)
    if n <= k + 1:
        return np.zeros(n)
    dist = np.empty(n)
    for i in range(0, n, 512):
        rows = np.arange(i, min(i + 512, n))
        d = 1.0 - unit[rows] @ unit.T
        d[np.arange(len(rows)), rows] = np.inf  # an image is not its own neighbour
        dist[rows] = np.partition(d, k - 1, axis=1)[:, :k].mean(1)
    med = np.median(dist)
    mad = 1.4826 * np.median(np.abs(dist - med)) or 1e-12
    return (dist - med) / mad


def class_balance(samples: list[Sample], classes: list[str]) -> dict:
    counts = np.bincount([s.label for s in samples], minlength=len(classes))
    per_split: dict[str, dict[str, int]] = {}
    for s in samples:
        per = per_split.setdefault(s.split or "all", dict.fromkeys(classes, 0))
        per[classes[s.label]] += 1
    present = counts[counts > 0]
    return {"counts": {c: int(n) for c, n in zip(classes, counts, strict=True)},
            "per_split": per_split,
            "ratio": round(float(present.max() / present.min()), 3) if len(present) else None,
            "imbalanced": is_imbalanced(counts),
            "empty_classes": [c for c, n in zip(classes, counts, strict=True) if n == 0]}


def audit_features(feats: Features, classes: list[str], *, folds: int = DEFAULT_FOLDS,
                   seed: int = 0, dup_threshold: float = DUP_THRESHOLD,
                   outlier_z: float = OUTLIER_Z) -> dict:
    """The audit of already computed features (JSON-ready, contract above)."""
    samples = feats.samples
    if len(samples) < 4:
        raise ValueError(f"the audit needs at least 4 usable images, got {len(samples)}")
    y = np.array([s.label for s in samples], np.int64)
    probs, k = oof_probabilities(feats.vectors, y, len(classes), folds=folds, seed=seed)
    cl = find_label_issues(probs, y)
    suspects = [{"path": samples[i].source, "given": classes[y[i]],
                 "suggested": classes[cl.suggested[i]], "score": round(float(cl.score[i]), 4)}
                for i in cl.ranked()]
    unit = centred_unit(feats.vectors)
    conflicts, leakage = near_duplicates(unit, samples, classes, dup_threshold)
    z = outlier_scores(unit)
    out_idx = np.flatnonzero(z > outlier_z)
    out_idx = out_idx[np.argsort(-z[out_idx], kind="stable")]
    outliers = [{"path": samples[i].source, "label": classes[y[i]], "score": round(float(z[i]), 2)}
                for i in out_idx]
    n = len(samples)
    return {
        "suspects": suspects,
        "conflicting_duplicates": conflicts,
        "leakage": leakage,
        "outliers": outliers,
        "class_balance": class_balance(samples, classes),
        "summary": {"images": n, "skipped": len(feats.skipped), "classes": len(classes),
                    "suspects": len(suspects), "suspect_share": round(len(suspects) / n, 4),
                    "estimated_noise_rate": round(cl.noise_rate, 4),
                    "oof_accuracy": round(float((probs.argmax(1) == y).mean()), 4),
                    "conflicting_duplicates": len(conflicts), "leakage_pairs": len(leakage),
                    "outliers": len(outliers), "folds": k, "features": feats.source,
                    "duplicate_threshold": dup_threshold, "outlier_z": outlier_z},
        "skipped": [{"path": s.source, "reason": s.reason} for s in feats.skipped],
    }


def run_audit(data: str, *, bundle: str | None = None, folds: int = DEFAULT_FOLDS,
              seed: int = 0, labels: str = "top", model: str | None = None,
              img_size: int | None = None, dup_threshold: float = DUP_THRESHOLD,
              allow_outside: bool = False, progress: bool = True,
              log: Callable[[str], None] = print) -> dict:
    """Load DATA (any form `train` reads), compute features, audit them. `allow_outside`
    lets a CSV manifest name files outside its own folder (as `train --allow-outside`)."""
    from sightwise.data.datasets import load_dataset
    from sightwise.label.features import backbone_features, bundle_features

    ds = load_dataset(data, labels=labels, allow_outside=allow_outside)
    if bundle is not None:
        feats = bundle_features(ds, bundle, progress=progress, log=log)
    else:
        feats = backbone_features(ds, model=model, img_size=img_size, progress=progress, log=log)
    result = audit_features(feats, ds.classes, folds=folds, seed=seed, dup_threshold=dup_threshold)
    result["summary"]["data"] = str(data)
    result["summary"]["layout"] = ds.layout
    result["summary"]["feature_seconds"] = round(feats.seconds, 2)
    return result


def audit_hint(features: np.ndarray, labels: np.ndarray, n_classes: int, *,
               data: str = "DATA", folds: int = 3, seed: int = 0,
               share: float = HINT_SHARE) -> str | None:
    """One line for `train` to print when confident learning on these (training) features
    suspects more than `share` of the labels; None otherwise. Costs `folds` probe fits on
    features the caller already has (e.g. the linear probe's)."""
    y = np.asarray(labels, np.int64)
    if len(y) < 10 or len(set(y.tolist())) < 2:
        return None
    probs, _ = oof_probabilities(features, y, n_classes, folds=folds, seed=seed)
    flagged = int(find_label_issues(probs, y).issues.sum())
    if flagged <= share * len(y):
        return None
    return (f"audit: {flagged} of {len(y)} training labels ({100 * flagged / len(y):.1f} %) look "
            f"wrong; review them with `sightwise data audit {data} --html audit.html`")
