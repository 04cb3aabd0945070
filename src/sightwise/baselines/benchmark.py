"""`sightwise benchmark`: deep models against traditional baselines on the same splits.

Five methods run on identical folds (DESIGN.md, "Honest numbers"): k-NN on pixels,
HOG + RBF-SVM, a linear probe on frozen pretrained features, the `finetune` strategy and
the `scratch` strategy. Every image is decoded once into a uint8 cache at the CNN size
(the traditional methods resize from it) and the frozen features are computed once for
all images, so the folds only pay for what differs between them.

Splits: a dataset that brings its own test split (MedMNIST .npz, split folders) is used
as given, one split; otherwise stratified k-fold (``folds`` >= 2) or, with ``folds=1``
or ``quick``, the first fold of a stratified 3-fold (a 2/3 - 1/3 hold-out). Byte-identical
files share a fold (StratifiedGroupKFold) so a copy is never trained on and tested. Inside
each fold a stratified validation part is carved from the training part; it chooses k,
C and gamma, and early-stops the CNNs. Accuracy intervals are 95 % t-intervals over folds,
or with one split the bootstrap interval over test images (`evaluate.metrics`).

Training time is wall time of everything a method needs to learn from the fold's
train + validation images; inference is batched wall time over the test images, in ms
per image, including preprocessing (HOG, greyscale resize, the frozen backbone).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split
from tqdm.auto import tqdm

from sightwise.baselines.figures import markdown_table, plot_benchmark
from sightwise.baselines.traditional import (
    fit_hog_svm,
    fit_knn_pixels,
    fit_linear_probe_features,
    model_size_bytes,
    predict_baseline,
)
from sightwise.bundle import atomic_write_bytes, atomic_write_json
from sightwise.config import TrainConfig
from sightwise.core import git_commit, is_imbalanced, package_versions
from sightwise.data.cache import build_cache, check_usable
from sightwise.data.datasets import Dataset, load_dataset
from sightwise.data.preprocess import Preprocessing, resize_rgb
from sightwise.data.splits import write_manifest
from sightwise.errors import DataError
from sightwise.evaluate.metrics import bootstrap_ci
from sightwise.models.classifier import build_classifier
from sightwise.train.budget import Budget
from sightwise.train.features import extract_features, frozen_extractor
from sightwise.train.finetune import evaluate_logits, fit
from sightwise.train.pipeline import resolve_preprocessing
from sightwise.train.strategies import learning_rates, new_model

METHODS = ("knn_pixels", "hog_svm", "linear_probe", "finetune", "scratch")
# CNN input size when img_size is not given, quick or full. The backbone's native 224
# costs ~3x per image (224^2 / 128^2); 128 leaves a 5-fold run on a 2-core CPU time to
# fine-tune in every fold within its 30-minute target, and small images gain nothing from
# more (docs/experiments/ compares sizes).
BENCH_IMG_SIZE = 128
# The whole run aims at these wall times; the CNNs get what the other work leaves
# (see _Clock). Targets sit below the promises (quick < 5 min, full < 30 min on 2 cores)
# because a CNN run overshoots its budget by up to one batch and one validation pass.
QUICK_TARGET_S = 240.0
FULL_TARGET_S = 1500.0
MIN_CNN_BUDGET_S = 15.0
VAL_FRACTION = 0.15
HOLDOUT_FOLDS = 3  # one split = the first fold of a stratified 3-fold
HOG_MAX_SIZE = 128  # traditional.fit_hog_svm's default: 8x8 cells of 16 px
# strategies._finetune trains from scratch with this learning rate for every weight.


@dataclass(frozen=True)
class Fold:
    """Positions into the benchmark's image arrays (dataset order, skipped files removed)."""

    index: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@dataclass
class Context:
    """Everything computed once and shared by all folds and methods."""

    data: str
    classes: list[str]
    labels: np.ndarray
    images: np.ndarray  # (N, S, S, 3) uint8 at the CNN size
    scratch_images: np.ndarray  # the same images at small_resnet's size
    pre: Preprocessing
    scratch_pre: Preprocessing
    features: np.ndarray  # (N, D) frozen pooled features
    feature_s_per_image: float
    backbone_bytes: int
    model: str
    seed: int
    progress: bool

    @property
    def hog_size(self) -> int:
        return min(HOG_MAX_SIZE, self.pre.size // 8 * 8)


@dataclass
class MethodRun:
    name: str
    y_pred: np.ndarray
    train_seconds: float
    infer_ms_per_image: float
    size_bytes: int
    params: dict
    test_sha256: str  # of the test positions this method was scored on


# ----------------------------------------------------------------------------- splits


def index_digest(idx: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(idx, np.int64).tobytes()).hexdigest()


def carve_val(train: np.ndarray, labels: np.ndarray, seed: int, frac: float = VAL_FRACTION
              ) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, val) from ``train``; val gets at least one image per class."""
    y = labels[train]
    n_classes = len(np.unique(y))
    n_val = max(n_classes, int(round(frac * len(train))))
    counts = np.bincount(y)
    strat = y if counts[counts > 0].min() >= 2 and n_val < len(train) - n_classes + 1 else None
    try:
        tr, va = train_test_split(train, test_size=n_val, random_state=seed, stratify=strat)
    except ValueError:  # a class too small to give one to each side: plain seeded split
        tr, va = train_test_split(train, test_size=n_val, random_state=seed)
    return np.sort(tr), np.sort(va)


def _kfold(labels: np.ndarray, groups: np.ndarray, k: int, seed: int) -> list[tuple]:
    counts = np.bincount(labels)
    small = counts[counts > 0].min()
    if small < k:
        raise DataError(f"a class has only {small} images; {k}-fold needs at least {k} per class")
    x = np.zeros(len(labels))
    if len(np.unique(groups)) < len(groups):  # duplicates: keep every copy in one fold
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        return list(splitter.split(x, labels, groups))
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(x, labels))


def plan_folds(ds: Dataset, labels: np.ndarray, folds: int, seed: int) -> tuple[list[Fold], str]:
    """The folds every method shares, and what kind they are (dataset/holdout/k-fold).

    ``ds.samples`` must be aligned with ``labels`` (the cache's order).
    """
    splits = np.array([s.split or "" for s in ds.samples])
    if "test" in splits and "train" in splits:
        train, test = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "test")
        val = np.flatnonzero(splits == "val")
        if len(val) == 0:
            train, val = carve_val(train, labels, seed)
        return [Fold(0, train, val, test)], "dataset"
    groups = np.unique([s.sha256 or s.source for s in ds.samples], return_inverse=True)[1]
    k = HOLDOUT_FOLDS if folds < 2 else folds
    pairs = _kfold(labels, groups, k, seed)[: 1 if folds < 2 else k]
    plan = []
    for i, (train, test) in enumerate(pairs):
        tr, va = carve_val(train, labels, seed + i)
        plan.append(Fold(i, tr, va, np.sort(test)))
    return plan, ("holdout" if folds < 2 else f"stratified-{k}-fold")


# ----------------------------------------------------------------------------- data


def _state_bytes(module: torch.nn.Module) -> int:
    """float32 bytes of the weights and BatchNorm statistics: what weights.safetensors holds."""
    return int(sum(t.numel() * 4 for t in module.state_dict().values() if t.is_floating_point()))


def _resize_all(images: np.ndarray, pre: Preprocessing) -> np.ndarray:
    from PIL import Image

    if images.shape[1] == pre.size:
        return images
    return np.stack([resize_rgb(Image.fromarray(img), pre) for img in images])


def prepare_context(data: str, out: Path, *, size: int | None, model: str, seed: int,
                    progress: bool, log) -> tuple[Context, Dataset, dict]:
    """Decode once, compute frozen features once; returns the context and timings."""
    t0 = time.perf_counter()
    pre = resolve_preprocessing(TrainConfig(data=data, out=str(out), model=model, img_size=size))
    ds = load_dataset(data)
    cache, skipped = build_cache(ds, pre, memmap_dir=out / "cache", progress=progress)
    for s in skipped:
        log(f"skipped {s.source}: {s.reason}")
    check_usable(cache, ds.classes)
    ds = Dataset(ds.classes, cache.samples, ds.root, ds.layout, ds.notes)
    # small_resnet trains at its own size (64 px) unless the cache is smaller, as
    # `sightwise train --strategy scratch` does; resizing the cache costs ~1 ms an image.
    scratch_pre = resolve_preprocessing(TrainConfig(data=data, out=str(out), strategy="scratch"))
    scratch_pre = replace(scratch_pre, size=min(scratch_pre.size, pre.size))
    scratch_images = _resize_all(cache.images, scratch_pre)
    decode_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    backbone = build_classifier(model, len(ds.classes), pretrained=True).backbone.eval()
    extractor = frozen_extractor(backbone, pre, n_images=len(cache.images))
    feats = extract_features(extractor, cache.images, pre, progress=progress, desc="features")
    feature_s = time.perf_counter() - t1
    ctx = Context(data=str(data), classes=list(ds.classes), labels=cache.labels,
                  images=cache.images, scratch_images=scratch_images, pre=pre,
                  scratch_pre=scratch_pre, features=feats,
                  feature_s_per_image=feature_s / len(feats), backbone_bytes=_state_bytes(backbone),
                  model=model, seed=seed, progress=progress)
    timing = {"decode_seconds": decode_s, "features_seconds": feature_s,
              "skipped": [{"path": s.source, "reason": s.reason} for s in skipped]}
    return ctx, ds, timing


# ----------------------------------------------------------------------------- methods


def _timed(predict, x: np.ndarray) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    pred = np.asarray(predict(x))
    return pred, (time.perf_counter() - start) * 1000.0 / len(x)


def _traditional(name: str, ctx: Context, fold: Fold) -> MethodRun:
    """k-NN or HOG+SVM from `baselines.traditional`, on the cached images."""
    x, y, seed = ctx.images, ctx.labels, ctx.seed + fold.index
    fitter = fit_knn_pixels if name == "knn_pixels" else fit_hog_svm
    kw = {} if name == "knn_pixels" else {"size": ctx.hog_size}
    res = fitter(x[fold.train], y[fold.train], x[fold.val], y[fold.val], seed=seed, **kw)
    # Predicting once and timing that call is time_inference_ms_per_image(repeats=1)
    # without paying for the HOG of the test images twice.
    pred, ms = _timed(lambda im: predict_baseline(res, im), x[fold.test])
    params = {k: v for k, v in res.params.items() if k != "search"}
    return MethodRun(name, pred, res.train_seconds, ms, model_size_bytes(res), params,
                     index_digest(fold.test))


def _linear_probe(ctx: Context, fold: Fold) -> MethodRun:
    """Logistic regression on the features computed once; their cost is charged per image."""
    f, y = ctx.features, ctx.labels
    # The trainer's `--balance auto` rule, so the probe here is the one `train` fits.
    weight = "balanced" if is_imbalanced(np.bincount(y[fold.train])) else None
    res = fit_linear_probe_features(f[fold.train], y[fold.train], f[fold.val], y[fold.val],
                                    class_weight=weight)
    pred, ms = _timed(lambda z: predict_baseline(res, z), f[fold.test])
    n_fit = len(fold.train) + len(fold.val)
    return MethodRun("linear_probe", pred,
                     res.train_seconds + ctx.feature_s_per_image * n_fit,
                     ms + ctx.feature_s_per_image * 1000.0,
                     ctx.backbone_bytes + model_size_bytes(res),
                     {"C": res.params["C"], "class_weight": weight}, index_digest(fold.test))


def _cnn(ctx: Context, fold: Fold, budget_s: float | None, *, pretrained: bool) -> MethodRun:
    """The `finetune` / `scratch` strategy: train.finetune.fit with the trainer's settings."""
    name = "finetune" if pretrained else "scratch"
    pre = ctx.pre if pretrained else ctx.scratch_pre
    x, y = (ctx.images if pretrained else ctx.scratch_images), ctx.labels
    cfg = TrainConfig(data=ctx.data, out="", strategy=name, model=ctx.model if pretrained else None,
                      img_size=pre.size, seed=ctx.seed + fold.index, progress=ctx.progress)
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    model = new_model(cfg, len(ctx.classes), pretrained)
    lr, head_lr = learning_rates(cfg, pretrained)
    res = fit(model, (x[fold.train], y[fold.train]), (x[fold.val], y[fold.val]), pre, cfg,
              Budget(budget_s), lr=lr, head_lr=head_lr, desc=f"{name} fold {fold.index + 1}")
    train_s = time.perf_counter() - start
    pred, ms = _timed(lambda im: evaluate_logits(model, im, pre).argmax(1), x[fold.test])
    params = {"model": cfg.model_name, "img_size": pre.size, "budget_s": budget_s,
              "epochs": res.epochs_run, "best_epoch": res.best_epoch,
              "stopped_by": res.stopped_by, "val_accuracy": res.best_val_accuracy,
              "images_per_second": res.images_per_second}
    return MethodRun(name, pred, train_s, ms, _state_bytes(model), params, index_digest(fold.test))


def run_method(name: str, ctx: Context, fold: Fold, budget_s: float | None = None) -> MethodRun:
    if name in ("knn_pixels", "hog_svm"):
        return _traditional(name, ctx, fold)
    if name == "linear_probe":
        return _linear_probe(ctx, fold)
    if name in ("finetune", "scratch"):
        return _cnn(ctx, fold, budget_s, pretrained=name == "finetune")
    raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")


# ----------------------------------------------------------------------------- folds


@dataclass
class _Clock:
    """Gives each CNN run an equal share of what the time target leaves.

    Before every CNN run: (target - elapsed - the estimated rest of the non-CNN work)
    divided by the CNN runs left, so an overshoot early is paid back by the later runs.
    A fixed ``budget_s`` overrides the plan.
    """

    target_s: float
    start: float
    budget_s: float | None = None

    def cnn_budget(self, runs_left: int, reserve_s: float) -> float:
        if self.budget_s is not None:
            return self.budget_s
        left = self.target_s - (time.perf_counter() - self.start) - reserve_s
        return max(MIN_CNN_BUDGET_S, left / max(1, runs_left))


def run_fold(ctx: Context, fold: Fold, clock: _Clock, folds_left: int, log) -> dict:
    """All methods on one fold; ``folds_left`` counts the folds after this one."""
    runs, t0 = {}, time.perf_counter()
    for name in METHODS[:3]:
        runs[name] = run_method(name, ctx, fold)
    trad_s = time.perf_counter() - t0
    # Test-set inference of a CNN costs about what the frozen forward pass did per image:
    # the same network at the same size (scratch's smaller one costs less, so this errs on
    # the safe side; timings in docs/experiments/).
    eval_s = ctx.feature_s_per_image * len(fold.test)
    for i, name in enumerate(METHODS[3:]):
        cnn_left = 2 * folds_left + (2 - i)
        budget = clock.cnn_budget(cnn_left, eval_s * cnn_left + trad_s * folds_left)
        runs[name] = run_method(name, ctx, fold, budget)
    y_test = ctx.labels[fold.test]
    record = {"fold": fold.index, "n_train": len(fold.train), "n_val": len(fold.val),
              "n_test": len(fold.test), "test_indices": fold.test.tolist(),
              "val_indices": fold.val.tolist(), "test_sha256": index_digest(fold.test),
              "y_test": y_test.tolist(), "methods": {}}
    for name, r in runs.items():
        acc = float(accuracy_score(y_test, r.y_pred))
        f1 = float(f1_score(y_test, r.y_pred, average="macro", zero_division=0))
        record["methods"][name] = {
            "accuracy": acc, "macro_f1": f1, "train_seconds": r.train_seconds,
            "infer_ms_per_image": r.infer_ms_per_image, "size_bytes": r.size_bytes,
            "params": r.params, "test_sha256": r.test_sha256, "y_pred": r.y_pred.tolist()}
        log(f"fold {fold.index + 1} {name}: accuracy {acc:.4f}, macro-F1 {f1:.4f}, "
            f"train {r.train_seconds:.1f}s, {r.infer_ms_per_image:.2f} ms/img")
    return record


# ----------------------------------------------------------------------------- summary


def t_interval(values: list[float], alpha: float = 0.05) -> list[float]:
    """Student-t ``1 - alpha`` interval of the mean over folds, clipped to [0, 1]."""
    v = np.asarray(values, np.float64)
    mean, sem = float(v.mean()), float(stats.sem(v))
    if sem == 0.0:  # every fold scored the same: scipy answers NaN for a zero scale
        return [mean, mean]
    lo, hi = stats.t.interval(1 - alpha, len(v) - 1, loc=mean, scale=sem)
    return [float(max(0.0, lo)), float(min(1.0, hi))]


def summarise(name: str, per_fold: list[dict], seed: int) -> dict:
    rows = [f["methods"][name] for f in per_fold]
    acc = [r["accuracy"] for r in rows]
    f1 = [r["macro_f1"] for r in rows]
    if len(rows) >= 2:
        acc_ci, f1_ci, how = t_interval(acc), t_interval(f1), "t-interval over folds"
    else:
        y, p = np.asarray(per_fold[0]["y_test"]), np.asarray(rows[0]["y_pred"])
        acc_ci = list(bootstrap_ci(y, p, "accuracy", seed=seed))
        f1_ci, how = list(bootstrap_ci(y, p, "macro_f1", seed=seed)), "bootstrap over test images"
    return {"name": name, "accuracy_mean": float(np.mean(acc)), "accuracy_ci": acc_ci,
            "accuracy_std": float(np.std(acc, ddof=1)) if len(acc) > 1 else 0.0,
            "macro_f1_mean": float(np.mean(f1)), "macro_f1_ci": f1_ci, "ci_method": how,
            "train_seconds": float(np.mean([r["train_seconds"] for r in rows])),
            "infer_ms_per_image": float(np.mean([r["infer_ms_per_image"] for r in rows])),
            "size_bytes": int(round(np.mean([r["size_bytes"] for r in rows])))}


def write_outputs(result: dict, out_dir: Path) -> None:
    """benchmark.json, benchmark.md and benchmark.png, each written atomically."""
    atomic_write_json(out_dir / "benchmark.json", result)
    atomic_write_bytes(out_dir / "benchmark.md", markdown_table(result).encode("utf-8"))
    for name in ("benchmark.json", "benchmark.md"):  # mkstemp makes 0600; these are to share
        os.chmod(out_dir / name, 0o644)
    plot_benchmark(result, out_dir / "benchmark.png")


# ----------------------------------------------------------------------------- entry


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (None: leave them), then restore.

    On a machine shared with other busy processes, every parallel op waits for all its
    threads to be scheduled; on a 2-core VM running 3 other jobs, 1 thread trained
    EfficientNet-Lite0 4x faster than 2 (22 vs 5.8 img/s at 128 px).
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_benchmark(data: str, out: str, *, folds: int = 5, quick: bool = False,
                  learning_curve: bool = False, seed: int = 0, model: str = "efficientnet_lite0",
                  img_size: int | None = None, cnn_budget_s: float | None = None,
                  progress: bool = True, log=print, threads: int | None = None) -> dict:
    """Run every method on the same folds; write benchmark.json/.md/.png under ``out``.

    ``quick``: one stratified hold-out split (``folds`` is ignored) and CNN budgets
    planned so the run takes about 4 minutes. Otherwise ``folds``-fold (``folds=1``: the
    hold-out) aiming at 25 minutes. A dataset with its own test split always uses it.
    ``img_size`` is the CNN input (default 128); ``cnn_budget_s`` fixes each CNN's
    wall-clock budget per fold instead of the plan; ``threads`` sets torch's thread count
    for the run (see `torch_threads`).
    ``learning_curve`` adds learning_curve.json/.png (see `baselines.learning_curve`).
    """
    with torch_threads(threads):
        return _run_benchmark(data, Path(out), folds=folds, quick=quick,
                              learning_curve=learning_curve, seed=seed, model=model,
                              img_size=img_size, cnn_budget_s=cnn_budget_s, progress=progress,
                              log=log)


def _run_benchmark(data: str, out_dir: Path, *, folds, quick, learning_curve, seed, model,
                   img_size, cnn_budget_s, progress, log) -> dict:

    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    np.random.seed(seed)
    torch.manual_seed(seed)
    size = img_size or BENCH_IMG_SIZE
    ctx, ds, timing = prepare_context(data, out_dir, size=size, model=model, seed=seed,
                                      progress=progress, log=log)
    plan, split = plan_folds(ds, ctx.labels, 1 if quick else folds, seed)
    log(f"benchmark: {len(ctx.labels)} images, {len(ctx.classes)} classes, split {split} "
        f"({len(plan)} fold(s)); decoded in {timing['decode_seconds']:.1f}s, "
        f"features in {timing['features_seconds']:.1f}s")
    clock = _Clock(QUICK_TARGET_S if quick else FULL_TARGET_S, start, cnn_budget_s)
    per_fold = [run_fold(ctx, fold, clock, len(plan) - 1 - i, log)
                for i, fold in enumerate(tqdm(plan, desc="folds", unit="fold",
                                              disable=not progress))]
    result = {
        "dataset": str(data), "manifest_sha256": write_manifest(ds, out_dir / "manifest.csv"),
        "n_images": len(ctx.labels), "classes": ctx.classes,
        "folds": len(plan), "split": split, "seed": seed, "quick": quick, "model": model,
        "indices": "positions in load_dataset(dataset).samples, skipped images removed",
        "img_size": ctx.pre.size, "scratch_img_size": ctx.scratch_pre.size,
        "hog_size": ctx.hog_size, "cnn_budget_s": cnn_budget_s, "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "methods": [summarise(name, per_fold, seed) for name in METHODS],
        "per_fold": per_fold,
        "timing": {**{k: v for k, v in timing.items() if k != "skipped"},
                   "total_seconds": time.perf_counter() - start},
        "skipped": timing["skipped"], "versions": package_versions(), "git_commit": git_commit(),
    }
    write_outputs(result, out_dir)
    log(markdown_table(result))
    if learning_curve:
        from sightwise.baselines.learning_curve import run_learning_curve

        result["learning_curve"] = run_learning_curve(ctx, plan[0], per_fold[0], out_dir, log=log)
    return result
