"""Comparable by construction: how a candidate version compares with the version that
holds an alias, for `promote`'s regression gate and the pipeline.

When both versions were tested on the same images, their recorded test metrics are
compared. When the test data differ (new images, relabelled ones), both ONNX graphs are run
on the test images that neither version saw in training (neither one's train nor validation
split), and the difference comes with its n and a paired bootstrap interval; the result is
cached per pair of bundle digests. "Not comparable" is the last resort (no such image left,
or none readable), and says why.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import numpy as np

from sightwise.bundle import Bundle, atomic_write_bytes, load_bundle, sha256_path
from sightwise.errors import SightwiseError
from sightwise.registry.store import sightwise_home


def test_fingerprint(bundle: Bundle) -> str | None:
    """sha256 of the test split's (file sha256, label) pairs from the bundle's manifest:
    the same test images even when the data moved or the seed re-drew train/val."""
    path = bundle.path / "manifest.csv"
    if not bundle.has("manifest.csv") or not path.is_file():
        return None
    rows = sorted(f"{r.get('sha256')},{r.get('label')}" for r in
                  csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))
                  if r.get("split") == "test")
    return hashlib.sha256("\n".join(rows).encode()).hexdigest() if rows else None


def same_test_data(a: Bundle, b: Bundle) -> bool:
    sa = a.meta.data.get("manifest_sha256")
    sb = b.meta.data.get("manifest_sha256")
    if sa and sa == sb:
        return True
    ta, tb = test_fingerprint(a), test_fingerprint(b)
    return ta is not None and ta == tb


def _recorded(bundle: Bundle) -> dict:
    test = bundle.meta.metrics.get("test", {})
    return {k: float(test[k]) if isinstance(test.get(k), (int, float)) else None
            for k in ("accuracy", "macro_f1")}


# ---------------------------------------------------------------- comparable by construction

N_BOOT = 2000
BOOT_SEED = 0
EVAL_BATCH = 32


def compare_versions(cand: Bundle, holder: Bundle, *, log=None) -> dict:
    """How `cand` compares with `holder`: {"method", "n", "candidate", "holder",
    "difference", ...}. Methods: "same-test-data" (their recorded test metrics),
    "common-images" (both graphs on the test images neither trained on, with a paired
    bootstrap interval of candidate minus holder) or "not-comparable" (with "reason")."""
    if same_test_data(cand, holder):
        test = cand.meta.metrics.get("test", {})
        c, h = _recorded(cand), _recorded(holder)
        diff = {k: None if c[k] is None or h[k] is None else c[k] - h[k] for k in c}
        return {"method": "same-test-data", "n": test.get("n"), "candidate": c, "holder": h,
                "difference": diff}
    path = _comparison_path(cand, holder)
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("digests") == [cand.digest, holder.digest]:
            return cached
    except (OSError, ValueError):
        pass
    result = {**_compare_on_common_images(cand, holder, log or (lambda _m: None)),
              "digests": [cand.digest, holder.digest]}
    try:  # registered bundles never change, so the pair's result never goes stale
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(result, indent=1).encode("utf-8"))
    except OSError:
        pass
    return result


def _comparison_path(cand: Bundle, holder: Bundle) -> Path:
    return sightwise_home() / "comparisons" / f"{cand.digest[:24]}-{holder.digest[:24]}.json"


def _not_comparable(reason: str) -> dict:
    return {"method": "not-comparable", "n": 0, "reason": reason}


def common_test_samples(cand: Bundle, holder: Bundle) -> tuple[list, list[str], dict]:
    """(samples, their class names, exclusions): the test images (by sha256) of either
    version that neither saw in its train or validation split, labelled alike by both,
    with a source whose bytes still match the manifest."""
    from sightwise.export.manifest import bundle_samples
    from sightwise.types import Sample

    per = {b.digest: {sp: bundle_samples(b, sp) for sp in ("train", "val", "test")}
           for b in (cand, holder)}
    seen = {s.sha256 for b in per.values() for sp in ("train", "val") for s in b[sp]}
    pool: dict[str, dict] = {}
    for b in (cand, holder):
        for s in per[b.digest]["test"]:
            if not s.sha256 or s.sha256 in seen:
                continue
            e = pool.setdefault(s.sha256, {"label": b.classes[s.label], "sources": [],
                                           "conflict": False})
            e["conflict"] |= e["label"] != b.classes[s.label]
            e["sources"].append(s.source)
    excluded = {"seen_in_training": len({s.sha256 for b in per.values() for s in b["test"]
                                         if s.sha256 in seen}),
                "label_disagreements": sum(e["conflict"] for e in pool.values()),
                "unreadable": 0}
    names = sorted({e["label"] for e in pool.values() if not e["conflict"]})
    samples = []
    for sha, e in sorted(pool.items()):
        if e["conflict"]:
            continue
        source = next((src for src in e["sources"] if _matches(src, sha)), None)
        if source is None:
            excluded["unreadable"] += 1
            continue
        samples.append(Sample(source, names.index(e["label"]), "test", sha))
    return samples, names, excluded


def _matches(source: str, sha: str) -> bool:
    if source.startswith("npz://"):
        return True  # array images: checked by the manifest hash of their runs
    try:
        return Path(source).is_file() and sha256_path(source) == sha
    except OSError:
        return False


def _compare_on_common_images(cand: Bundle, holder: Bundle, log) -> dict:
    try:
        cand, holder = load_bundle(cand.path), load_bundle(holder.path)  # graphs verified
        samples, names, excluded = common_test_samples(cand, holder)
    except (SightwiseError, OSError, KeyError, ValueError) as exc:
        return _not_comparable(f"cannot read both manifests ({exc})")
    if not samples:
        return {**_not_comparable(
            "no test image of either version lies outside both versions' training data and "
            f"is still readable with the same label ({excluded})"), "excluded": excluded}
    try:
        kept, pred_c = _predict_names(cand, samples, log)
        kept_h, pred_h = _predict_names(holder, samples, log)
    except (SightwiseError, OSError) as exc:
        return _not_comparable(f"cannot run both graphs ({exc})")
    common = sorted(set(kept) & set(kept_h))
    excluded["unreadable"] += len(samples) - len(common)
    if not common:
        return _not_comparable("none of the common test images could be decoded")
    y = np.array([samples[i].label for i in common])
    classes = sorted(set(names) | set(cand.classes) | set(holder.classes))
    idx = {c: i for i, c in enumerate(classes)}
    y = np.array([idx[names[v]] for v in y])
    pc = np.array([idx[pred_c[i]] for i in common])
    ph = np.array([idx[pred_h[i]] for i in common])
    stats = paired_bootstrap(y, pc, ph, len(classes), n_boot=N_BOOT, seed=BOOT_SEED)
    log(f"compared on {len(common)} test images neither version trained on")
    return {"method": "common-images", "n": len(common), **stats, "excluded": excluded,
            "bootstrap": {"resamples": N_BOOT, "seed": BOOT_SEED, "interval": 0.95}}


def _predict_names(bundle: Bundle, samples: list, log) -> tuple[list[int], dict[int, str]]:
    """Indices of the samples that decoded, and each one's top class name, from the
    bundle's ONNX graph (the runtime's input path: decode, resize, normalize)."""
    from sightwise.core import make_session
    from sightwise.data.cache import build_cache
    from sightwise.data.datasets import Dataset
    from sightwise.data.preprocess import normalize

    pre = bundle.preprocessing
    cache, _ = build_cache(Dataset([], samples, Path("."), "manifest"), pre, progress=False)
    position = {s.source: i for i, s in enumerate(samples)}
    kept = [position[s.source] for s in cache.samples]
    session = make_session(bundle.graph(), quiet=True)
    images = np.asarray(cache.images)
    logits = [session.run(["logits"], {"image": normalize(images[i:i + EVAL_BATCH], pre)})[0]
              for i in range(0, len(images), EVAL_BATCH)]
    top = np.concatenate(logits).argmax(1) if logits else np.zeros(0, int)
    return kept, {k: bundle.classes[int(t)] for k, t in zip(kept, top, strict=True)}


def macro_f1_from_counts(tp, fp, fn) -> np.ndarray:
    """Macro-F1 over the classes that occur (as truth or prediction), as scikit-learn's
    f1_score(average="macro", zero_division=0) counts them; works on stacked rows.

    >>> float(macro_f1_from_counts(np.array([2, 0, 0]), np.array([0, 1, 0]), np.array([1, 0, 0])))
    0.4
    """
    tp, fp, fn = (np.asarray(a, np.float64) for a in (tp, fp, fn))
    present = (tp + fp + fn) > 0
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=present)
    return (f1 * present).sum(-1) / np.maximum(present.sum(-1), 1)


def paired_bootstrap(y, pred_a, pred_b, n_classes: int, *, n_boot: int = N_BOOT,
                     seed: int = BOOT_SEED) -> dict:
    """Accuracy and macro-F1 of A and B on the same images, and A minus B with a 95 %
    percentile interval from `n_boot` resamples of the images (the same resample for both,
    so the interval is of the paired difference)."""
    y, pa, pb = (np.asarray(a, np.int64) for a in (y, pred_a, pred_b))
    n = len(y)
    eye = np.eye(n_classes)
    truth = eye[y]
    one = {"a": (eye[pa], pa == y), "b": (eye[pb], pb == y)}
    rng = np.random.default_rng(seed)
    diffs = {"accuracy": [], "macro_f1": []}
    for start in range(0, n_boot, 250):  # 250 x n weights at a time bounds the memory
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=min(250, n_boot - start)).astype(float)
        vals = {}
        for key, (pred, correct) in one.items():
            tp = w @ (truth * pred)
            vals[key] = (w @ correct / n,
                         macro_f1_from_counts(tp, w @ pred - tp, w @ truth - tp))
        diffs["accuracy"].append(vals["a"][0] - vals["b"][0])
        diffs["macro_f1"].append(vals["a"][1] - vals["b"][1])
    point = {}
    for key, (pred, correct) in one.items():
        tp = (truth * pred).sum(0)
        point[key] = {"accuracy": float(correct.mean()),
                      "macro_f1": float(macro_f1_from_counts(tp, pred.sum(0) - tp,
                                                             truth.sum(0) - tp))}
    diff = {}
    for metric, parts in diffs.items():
        d = np.concatenate(parts)
        diff[metric] = point["a"][metric] - point["b"][metric]
        diff[f"{metric}_ci"] = [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))]
    return {"candidate": point["a"], "holder": point["b"], "difference": diff}
