"""The reference profile a stream is compared with: `reference.npz` inside a bundle.

Built from the bundle's validation split through the ONNX graph (the same pass the server
runs): calibrated probabilities, pooled embeddings, a PCA basis of the embeddings, the
Mahalanobis outlier model in PCA space with its out-of-fold threshold, the predicted-class
prior, the MMD kernel bandwidth and the ATC threshold. The file holds numbers only and is
read with `allow_pickle=False`; bundle.json lists it with its sha256 like every bundle file.
"""

from __future__ import annotations

import io
import json
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sightwise.bundle import Bundle, load_bundle, write_bundle_meta
from sightwise.core import atomic_write_bytes, softmax
from sightwise.errors import BundleError, DataError

REFERENCE = "reference.npz"
FORMAT = 1
COMPONENTS = 32
OUTLIER_QUANTILE = 0.95  # 5 % of clean images are "outliers": a rate a window can test
_ARRAYS = ("probs", "labels", "embeddings", "pca_mean", "pca_components", "pca_var", "proj",
           "fold_mean", "fold_axes", "fold_center", "fold_precision")
FOLDS = 5


@dataclass(frozen=True, eq=False)
class Reference:
    """Arrays of reference.npz plus its scalar statistics (`stats`) and provenance (`meta`)."""

    probs: np.ndarray           # (n, C) calibrated probabilities of the reference images
    labels: np.ndarray          # (n,) true class indices
    embeddings: np.ndarray      # (n, D) pooled embeddings
    pca_mean: np.ndarray        # (D,)
    pca_components: np.ndarray  # (k, D) rows are unit principal axes
    pca_var: np.ndarray         # (k,) variance along each axis
    proj: np.ndarray            # (n, k) reference embeddings in PCA space
    fold_mean: np.ndarray       # (K, D)    the outlier model of each of K folds:
    fold_axes: np.ndarray       # (K, k, D) PCA fitted without the fold's images,
    fold_center: np.ndarray     # (K, k)    and a shrunk Gaussian in that space
    fold_precision: np.ndarray  # (K, k, k)
    stats: dict                 # scalars: thresholds, rates, accuracy, bandwidth
    meta: dict = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return int(self.probs.shape[1])

    @property
    def pred_counts(self) -> np.ndarray:
        return np.bincount(self.probs.argmax(1), minlength=self.n_classes)

    def project(self, embeddings) -> np.ndarray:
        """Embeddings (N, D) -> PCA coordinates (N, k), float32."""
        e = self._check(embeddings)
        return ((e - self.pca_mean) @ self.pca_components.T).astype(np.float32)

    def outlier_scores(self, embeddings, keys) -> np.ndarray:
        """Squared Mahalanobis distance of each embedding under one fold's model, the fold
        picked by its key (the image's sha256), so the score is comparable with the
        reference's out-of-fold scores (see `out_of_fold_models`)."""
        e = self._check(embeddings)
        folds = np.array([fold_of(k, len(self.fold_mean)) for k in keys], np.int64)
        out = np.empty(len(e))
        for j in np.unique(folds):
            rows = folds == j
            d = (e[rows] - self.fold_mean[j]) @ self.fold_axes[j].T - self.fold_center[j]
            out[rows] = np.einsum("ij,jk,ik->i", d, self.fold_precision[j], d)
        return out

    def _check(self, embeddings) -> np.ndarray:
        e = np.asarray(embeddings, np.float64)
        if e.ndim != 2 or e.shape[1] != self.pca_mean.shape[0]:
            raise ValueError(f"expected embeddings of shape (N, {self.pca_mean.shape[0]}), "
                             f"got {e.shape}")
        return e


def fold_of(key, folds: int) -> int:
    """A stable fold for an image: from its sha256 (hex) when it has one."""
    try:
        return int(str(key)[:12], 16) % folds
    except ValueError:
        return zlib.crc32(str(key).encode()) % folds


# -- statistics from arrays ------------------------------------------------------------------


def fit_reference(probs, embeddings, labels, *, components: int = COMPONENTS,
                  outlier_quantile: float = OUTLIER_QUANTILE, seed: int = 0,
                  meta: dict | None = None) -> Reference:
    """Every statistic the window tests need, from the reference split's outputs."""
    probs = np.asarray(probs, np.float32)
    emb = np.asarray(embeddings, np.float32)
    labels = np.asarray(labels, np.int64)
    n = len(probs)
    if n < 10 or len(emb) != n or len(labels) != n:
        raise DataError(f"a reference needs at least 10 images with probabilities, embeddings "
                        f"and labels; got {n}, {len(emb)}, {len(labels)}")
    mean, axes, var = pca(emb, components)
    proj = ((emb - mean) @ axes.T).astype(np.float32)
    oof, models = out_of_fold_models(emb, axes.shape[0], seed=seed)
    threshold = float(np.quantile(oof, outlier_quantile))
    accuracy = float((probs.argmax(1) == labels).mean())
    stats = {
        "n": n, "components": int(axes.shape[0]),
        "outlier_threshold": threshold,
        "outlier_count": int(np.sum(oof > threshold)),
        "outlier_rate": float(np.mean(oof > threshold)),
        "accuracy": accuracy,
        "atc_threshold": atc_threshold(probs, labels),
        "mean_confidence": float(probs.max(1).mean()),
        "mmd_bandwidth": median_distance(proj),
    }
    return Reference(probs, labels, emb, mean, axes, var, proj, *models, stats, dict(meta or {}))


def pca(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, axes (k', D), variances (k',)) with k' = min(k, n - 1, D), by SVD."""
    x = np.asarray(x, np.float64)
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    k = max(1, min(int(k), len(x) - 1, x.shape[1]))
    # Fix each axis's sign (largest coordinate positive) so the basis is reproducible.
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])
    vt = vt * np.where(signs == 0, 1, signs)[:, None]
    return mean.astype(np.float32), vt[:k].astype(np.float32), (s[:k] ** 2 / (len(x) - 1))


def ledoit_wolf(x: np.ndarray, shrink: float | None = None) -> tuple[np.ndarray, float]:
    """(covariance, shrinkage): the sample covariance shrunk towards a scaled identity by
    Ledoit & Wolf's (2004) intensity, or by `shrink` when given. With 32 dimensions and a
    few hundred (or fewer) reference images the sample covariance is badly conditioned, and
    its inverse would make every new image look like an outlier."""
    x = np.asarray(x, np.float64)
    n, p = x.shape
    xc = x - x.mean(0)
    s = xc.T @ xc / n
    mu = np.trace(s) / p
    if shrink is None:
        d2 = np.sum((s - mu * np.eye(p)) ** 2)
        sq = np.sum(xc ** 2, axis=1)
        # ||x x^T - S||_F^2 = |x|^4 - 2 x^T S x + ||S||_F^2, averaged over the rows.
        b2 = np.mean(sq ** 2 - 2 * np.einsum("ij,jk,ik->i", xc, s, xc) + np.sum(s ** 2)) / n
        shrink = 1.0 if d2 <= 0 else min(b2, d2) / d2
    return shrink * mu * np.eye(p) + (1 - shrink) * s, float(shrink)


def out_of_fold_models(emb: np.ndarray, k: int, folds: int = FOLDS, seed: int = 0):
    """(out-of-fold squared distances (n,), (means, axes, centres, precisions) of the folds).

    Image i of fold j is scored by the PCA + Gaussian model fitted on the other folds. A
    new image is scored by the model of the fold its sha256 picks (`fold_of`): it is then
    exchangeable with fold j's own images under model j, so the share of new clean images
    beyond the threshold matches the reference's out-of-fold share. (A model fitted on all
    reference images flags ~1.3x the intended share of new images: its PCA basis and
    covariance are fitted to the very points the threshold would be set on.)
    """
    n = len(emb)
    fold = np.random.default_rng(seed).permutation(n) % folds  # even, seeded folds
    out = np.empty(n)
    means, axes_, centres, precs = [], [], [], []
    for j in range(folds):
        part, rest = np.flatnonzero(fold == j), np.flatnonzero(fold != j)
        mean, axes, _ = pca(emb[rest], k)
        axes = np.pad(axes, ((0, k - len(axes)), (0, 0)))  # a small fold may have fewer axes
        z_rest = (emb[rest] - mean) @ axes.T
        centre, (cov, _) = z_rest.mean(0), ledoit_wolf(z_rest)
        prec = np.linalg.pinv(cov)
        d = (emb[part] - mean) @ axes.T - centre
        out[part] = np.einsum("ij,jk,ik->i", d, prec, d)
        means.append(mean), axes_.append(axes), centres.append(centre), precs.append(prec)
    return out, (np.stack(means), np.stack(axes_), np.stack(centres), np.stack(precs))


def neg_entropy(probs) -> np.ndarray:
    """ATC's score (Garg et al., ICLR 2022, 'ATC-NE'): sum p log p, higher = surer."""
    p = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)
    return np.sum(p * np.log(p), axis=1)


def atc_threshold(probs, labels) -> float:
    """The score t with share(score >= t) on the reference equal to its accuracy.

    >>> atc_threshold(np.array([[.9, .1], [.6, .4], [.8, .2], [.7, .3]]), np.array([0, 1, 0, 0]))
    -0.6108643020548935
    """
    scores = np.sort(neg_entropy(probs))
    wrong = int(round((1 - float((np.asarray(probs).argmax(1) == labels).mean())) * len(scores)))
    return float("inf") if wrong >= len(scores) else float(scores[wrong])


def median_distance(x: np.ndarray, max_points: int = 500) -> float:
    """Median pairwise Euclidean distance: the Gaussian kernel's bandwidth (median heuristic)."""
    x = np.asarray(x, np.float64)[:max_points]
    sq = np.sum(x ** 2, 1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0)
    iu = np.triu_indices(len(x), 1)
    med = float(np.sqrt(np.median(d2[iu]))) if len(iu[0]) else 1.0
    return med if med > 0 else 1.0


# -- the file ----------------------------------------------------------------------------------


def reference_bytes(ref: Reference) -> bytes:
    meta = {"format": FORMAT, "stats": ref.stats, **ref.meta}
    buf = io.BytesIO()
    np.savez_compressed(buf, meta=np.array(json.dumps(meta)),
                        **{name: getattr(ref, name) for name in _ARRAYS})
    return buf.getvalue()


def read_reference(path: str | Path) -> Reference:
    """Load reference.npz (numbers and one JSON string; never a pickle)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {name: z[name] for name in _ARRAYS}
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(f"{path}: not a readable reference profile ({exc}); rebuild it with "
                          "`sightwise monitor reference BUNDLE`") from None
    if meta.pop("format", None) != FORMAT:
        raise BundleError(f"{path}: reference format is not {FORMAT}; rebuild it with "
                          "`sightwise monitor reference BUNDLE`")
    stats = meta.pop("stats")
    return Reference(**arrays, stats=stats, meta=meta)


def load_reference(bundle: Bundle | str | Path) -> Reference:
    """The bundle's reference profile (the bundle's sha256 checks apply)."""
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    if REFERENCE not in b.meta.files:
        raise BundleError(f"{b.path}: bundle has no {REFERENCE}; build it with "
                          f"`sightwise monitor reference {b.path}`")
    ref = read_reference(b.file(REFERENCE))
    return Reference(**{**ref.__dict__, "meta": {**ref.meta, "id": reference_id(b)}})


def reference_id(bundle: Bundle) -> str:
    """Short fingerprint of the bundle's reference.npz: records carry it, so a report
    only compares predictions projected with this same PCA basis."""
    return bundle.meta.files[REFERENCE].sha256[:16]


def build_reference(bundle_path: str | Path, *, components: int = COMPONENTS,
                    split: str = "val", threads: int | None = None, log=print) -> Path:
    """Write reference.npz into the bundle from its `split` images and re-hash bundle.json.

    Runs the bundle's ONNX graph through `sightwise.runtime.Predictor`, so the statistics
    are those of the graph the server runs. Returns the file's path.
    """
    from sightwise.export.manifest import bundle_samples, load_images, unchanged
    from sightwise.runtime import Predictor

    bundle = load_bundle(bundle_path)
    samples = bundle_samples(bundle, split)
    if not samples:
        raise DataError(f"{bundle.path}: the manifest has no {split!r} images to build a "
                        "reference from")
    predictor = Predictor(bundle, threads=threads)
    images, labels = load_images(unchanged(samples, log), bundle.preprocessing, log,
                                 what=f"{split}-split")
    probs, emb = run_outputs(predictor, images)
    ref = fit_reference(probs, emb, labels, components=components, meta={
        "split": split, "classes": bundle.classes, "model_file": predictor.model_file,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    out = atomic_write_bytes(bundle.path / REFERENCE, reference_bytes(ref))
    meta = bundle.meta.to_dict()
    meta["monitor"] = {"reference": REFERENCE, "split": split, "n": ref.stats["n"],
                       "components": ref.stats["components"],
                       "accuracy": ref.stats["accuracy"]}
    write_bundle_meta(bundle.path, meta)
    log(f"wrote {out} ({ref.stats['n']} {split} images, {ref.stats['components']} PCA "
        f"components, accuracy {ref.stats['accuracy']:.2%})")
    return out


def run_outputs(predictor, images: np.ndarray, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probabilities and embeddings of resized uint8 images (N, S, S, 3)."""
    from sightwise.data.preprocess import normalize

    probs, emb = [], []
    for i in range(0, len(images), chunk):
        out = predictor.run(normalize(images[i:i + chunk], predictor.preprocessing),
                            ["logits", "embedding"])
        probs.append(softmax(out["logits"], predictor.temperature))
        emb.append(out["embedding"].astype(np.float32))
    return np.concatenate(probs), np.concatenate(emb)
