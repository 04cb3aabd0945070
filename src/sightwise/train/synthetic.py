"""`train ... --synthetic DIR`: generated images join the training split only when
cross-validation on the real training images says they help.

DIR holds one folder per class, named as in the data (`synth gan` writes this layout;
folders starting with "_" or "." are skipped). The decision, before any model is trained:

1. Features of the real training images and of the generated images from the frozen
   pretrained backbone (the linear probe's features; EfficientNet-Lite0's when the chosen
   model has no pretrained weights).
2. Stratified k-fold cross-validation over the real training images only (k = 5, fewer
   when a class has fewer images): in each fold a logistic-regression probe is fitted on
   the other folds' real images, once without and once with all generated images, and
   predicts the held-out real fold. Validation and test images take no part.
3. The pooled held-out predictions give macro-F1 and each generated class's recall, with
   and without; a paired bootstrap over the held-out images (1000 resamples) gives a 95 %
   interval of the difference. Macro-F1 decides: a rare class's recall bought with false
   alarms in the other classes does not count as help. The images are kept only when the
   interval's lower bound is above zero.

When kept, they enter the training split (and manifest.csv, split "train") and nothing
else; validation, calibration, early stopping and the test metrics stay real-only.
Generated files byte-identical to a validation or test image are refused outright.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from sightwise.core import atomic_write_json, is_imbalanced, sha256_path
from sightwise.data.cache import ImageCache
from sightwise.data.datasets import Dataset
from sightwise.data.decode import decode_image, is_image_path
from sightwise.data.preprocess import Preprocessing, resize_rgb
from sightwise.data.splits import write_manifest
from sightwise.errors import DataError, ImageDecodeError
from sightwise.types import Sample

FOLDS = 5
N_BOOT = 1000
PROBE_C = 0.1  # the middle of the linear probe's grid; no inner search inside each fold


@dataclass
class SyntheticSet:
    images: np.ndarray  # (N, S, S, 3) uint8 at the run's input size
    labels: np.ndarray
    samples: list[Sample]


def read_synthetic(folder: str | Path, classes: list[str], pre: Preprocessing,
                   refuse: set[str] = frozenset(), log=print) -> SyntheticSet:
    """DIR/<class>/* images at the run's preprocessing; unreadable files are reported and
    skipped, files whose sha256 is in `refuse` (validation/test images) are refused."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"--synthetic {root}: not a folder of class folders")
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(("_", ".")))
    unknown = [d.name for d in dirs if d.name not in classes]
    if unknown:
        raise DataError(f"--synthetic {root}: folder(s) {', '.join(unknown)} name no class of the "
                        f"data (its classes: {', '.join(classes)})")
    images, labels, samples = [], [], []
    for d in dirs:
        for f in sorted(p for p in d.rglob("*") if p.is_file() and not p.is_symlink() and is_image_path(p)):
            digest = sha256_path(f)
            if digest in refuse:
                log(f"refused {f}: identical to a validation or test image")
                continue
            try:
                images.append(resize_rgb(decode_image(f), pre))
            except ImageDecodeError as exc:
                log(f"skipped {f}: {exc}")
                continue
            labels.append(classes.index(d.name))
            samples.append(Sample(str(f.resolve()), classes.index(d.name), "train", digest))
    if not images:
        raise DataError(f"--synthetic {root}: no usable images in its class folders")
    return SyntheticSet(np.stack(images), np.array(labels, np.int64), samples)


# -- the decision --------------------------------------------------------------------------


def _probe_predict(f_train, y_train, f_test, num_classes: int, seed: int) -> np.ndarray:
    """The linear probe's recipe (centre, one global scale, logistic regression, balanced
    class weights above 3:1) with a fixed C; -> predicted labels of f_test."""
    from sklearn.linear_model import LogisticRegression

    mu = f_train.mean(0)
    scale = float(f_train.std(0).mean()) or 1.0
    counts = np.bincount(y_train, minlength=num_classes)
    lr = LogisticRegression(C=PROBE_C, max_iter=3000, random_state=seed,
                            class_weight="balanced" if is_imbalanced(counts) else None)
    lr.fit((f_train - mu) / scale, y_train)
    return lr.predict((f_test - mu) / scale)


def cross_validate(f_real: np.ndarray, y_real: np.ndarray, f_syn: np.ndarray, y_syn: np.ndarray,
                   num_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """-> (true labels, predictions without, predictions with, folds), pooled over the
    held-out real folds in a fixed order."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y_real, minlength=num_classes)
    k = int(min(FOLDS, counts[counts > 0].min()))
    if k < 2:
        raise DataError("too few real training images in a class (fewer than 2) to cross-validate")
    truth, without, with_ = [], [], []
    for tr, te in StratifiedKFold(k, shuffle=True, random_state=seed).split(f_real, y_real):
        truth.append(y_real[te])
        without.append(_probe_predict(f_real[tr], y_real[tr], f_real[te], num_classes, seed))
        with_.append(_probe_predict(np.concatenate([f_real[tr], f_syn]), np.r_[y_real[tr], y_syn],
                                    f_real[te], num_classes, seed))
    return np.concatenate(truth), np.concatenate(without), np.concatenate(with_), k


def resampled_scores(y: np.ndarray, pred: np.ndarray, idx: np.ndarray, num_classes: int,
                     rare: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Macro-F1 (scikit-learn's: over classes present in truth or prediction) and the mean
    recall of the `rare` classes for each row of resample indices `idx` (B, n)."""
    b = len(idx)
    off = (np.arange(b) * num_classes)[:, None]
    t, p = (y[idx] + off).ravel(), (pred[idx] + off).ravel()
    hit = (y[idx] == pred[idx]).ravel().astype(np.float64)
    size = b * num_classes
    tp = np.bincount(t, weights=hit, minlength=size).reshape(b, -1)
    support = np.bincount(t, minlength=size).reshape(b, -1)
    denom = support + np.bincount(p, minlength=size).reshape(b, -1)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    macro = f1.sum(1) / (denom > 0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = (tp[:, rare] / support[:, rare]).mean(1)  # NaN when a resample lacks one
    return macro, recall


def paired_gain(y, without, with_, num_classes: int, rare: list[int], seed: int = 0,
                n_boot: int = N_BOOT) -> dict:
    """Point values with and without, and the percentile bootstrap interval of each
    difference over the same resamples of the held-out images."""
    n = len(y)
    every = np.arange(n)[None, :]
    f_wo, r_wo = resampled_scores(y, without, every, num_classes, rare)
    f_wi, r_wi = resampled_scores(y, with_, every, num_classes, rare)
    idx = np.random.default_rng(seed).integers(0, n, (n_boot, n))
    bf_wo, br_wo = resampled_scores(y, without, idx, num_classes, rare)
    bf_wi, br_wi = resampled_scores(y, with_, idx, num_classes, rare)

    def interval(diff: np.ndarray, point: float) -> dict:
        diff = diff[np.isfinite(diff)]
        lo, hi = np.percentile(diff, [2.5, 97.5])
        return {"low": float(lo), "mean": float(point), "high": float(hi)}

    return {"macro_f1": {"without": float(f_wo[0]), "with": float(f_wi[0]),
                         "gain": interval(bf_wi - bf_wo, float(f_wi[0] - f_wo[0]))},
            "rare_recall": {"without": float(r_wo[0]), "with": float(r_wi[0]),
                            "gain": interval(br_wi - br_wo, float(r_wi[0] - r_wo[0]))}}


def decide(f_real, y_real, f_syn, y_syn, classes: list[str], seed: int = 0) -> dict:
    """The guardrail's verdict as metrics.json records it under "synthetic"."""
    rare = sorted(set(y_syn.tolist()))
    y, wo, wi, k = cross_validate(f_real, y_real, f_syn, y_syn, len(classes), seed)
    res = paired_gain(y, wo, wi, len(classes), rare, seed)
    gain = res["macro_f1"]["gain"]
    kept = gain["low"] > 0
    names = ", ".join(classes[c] for c in rare)
    why = (f"the 95 % interval of the macro-F1 gain, [{gain['low']:+.4f}, {gain['high']:+.4f}] "
           f"(mean {gain['mean']:+.4f}), " + ("lies above zero" if kept else "does not lie above zero"))
    return {"kept": bool(kept), "n": int(len(y_syn)), "gain": gain, "metric": "macro_f1",
            "classes": {classes[c]: int((y_syn == c).sum()) for c in rare},
            "macro_f1": {k_: res["macro_f1"][k_] for k_ in ("without", "with")},
            "rare_recall": res["rare_recall"], "folds": k, "n_real": int(len(y)),
            "decided_by": f"{k}-fold cross-validation of a logistic-regression probe (C={PROBE_C}) "
                          "on frozen backbone features of the real training images",
            "reason": f"{'kept' if kept else 'left out'} {len(y_syn)} generated image(s) of {names}: {why}"}


# -- the hook in run_training ----------------------------------------------------------------


def backbone_features(cfg, pre: Preprocessing, images: np.ndarray) -> np.ndarray:
    from sightwise.models.classifier import build_classifier
    from sightwise.models.registry import get_spec
    from sightwise.train.features import extract_features, frozen_extractor

    name = cfg.model_name if get_spec(cfg.model_name).has_pretrained else "efficientnet_lite0"
    model = build_classifier(name, 2, pretrained=True).eval()
    return extract_features(frozen_extractor(model.backbone, pre, len(images)), images, pre,
                            progress=cfg.progress, desc="features (guardrail)")


def apply_synthetic(cfg, data, log=print):
    """Decide on cfg.synthetic; when kept, add the images to the training split of `data`
    (cache, dataset, manifest.csv). -> (data, the "synthetic" record)."""
    classes, pre = data.dataset.classes, data.preprocessing
    held_out = {s.sha256 for s in data.dataset.samples if s.split in ("val", "test") and s.sha256}
    syn = read_synthetic(cfg.synthetic, classes, pre, held_out, log)
    x_real, y_real = data.cache.subset("train")
    log(f"synthetic: {len(syn.labels)} generated image(s); cross-validating on "
        f"{len(y_real)} real training images")
    feats = backbone_features(cfg, pre, np.concatenate([x_real, syn.images]))
    info = decide(feats[:len(y_real)], y_real, feats[len(y_real):], syn.labels, classes, cfg.seed)
    info["folder"] = str(Path(cfg.synthetic))
    log(f"synthetic: {info['reason']}")
    if info["kept"]:
        data = add_to_training(data, syn, Path(cfg.out) / "manifest.csv")
    return data, info


def add_to_training(data, syn: SyntheticSet, manifest: Path):
    cache = data.cache
    merged = ImageCache(images=np.concatenate([cache.images, syn.images]),
                        labels=np.r_[cache.labels, syn.labels],
                        splits=np.r_[cache.splits, np.array(["train"] * len(syn.labels))],
                        samples=list(cache.samples) + syn.samples)
    ds = data.dataset
    ds = Dataset(ds.classes, list(ds.samples) + syn.samples, ds.root, ds.layout, ds.notes)
    return replace(data, dataset=ds, cache=merged, manifest_sha256=write_manifest(ds, manifest))


def record_synthetic(run_dir: Path, metrics: dict, info: dict) -> None:
    """metrics.json gains "synthetic"; report.html a section saying which way it went."""
    metrics["synthetic"] = info
    atomic_write_json(run_dir / "metrics.json", metrics)
    report = run_dir / "report.html"
    if report.is_file():
        page = report.read_text(encoding="utf-8")
        report.write_text(page.replace("<footer>", _section(info) + "\n<footer>", 1), encoding="utf-8")


def _section(info: dict) -> str:
    def row(name, without, with_, gain):
        return (f"<tr><td>{name}</td><td>{without:.4f}</td><td>{with_:.4f}</td>"
                f"<td>{gain['mean']:+.4f} [{gain['low']:+.4f}, {gain['high']:+.4f}]</td></tr>")

    rr = info["rare_recall"]
    table = ("<table><tr><th>cross-validated on real training images</th><th>without</th>"
             "<th>with</th><th>gain [95 % interval]</th></tr>"
             + row("macro-F1 (decides)", info["macro_f1"]["without"], info["macro_f1"]["with"], info["gain"])
             + row("recall of the generated class(es)", rr["without"], rr["with"], rr["gain"]) + "</table>")
    verdict = "KEPT in the training split" if info["kept"] else "LEFT OUT of training"
    return (f"<section><h2>Synthetic images: {verdict}</h2><p>{html.escape(info['reason'])}. "
            f"{html.escape(info['decided_by'])}; {info['folds']} folds, {info['n_real']} real images. "
            f"Validation and test images are real only.</p>{table}</section>")
