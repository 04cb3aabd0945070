"""`sightwise train`: data -> cache -> strategy -> evaluation -> report -> bundle.

Each step is a plain function; `run_training` calls them top to bottom.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from sightwise.bundle import write_bundle_meta
from sightwise.config import TrainConfig
from sightwise.core import git_commit, package_versions
from sightwise.data.cache import ImageCache, build_cache, check_usable
from sightwise.data.datasets import Dataset, load_dataset
from sightwise.data.preprocess import Preprocessing
from sightwise.data.splits import (
    assign_splits,
    drop_leakage,
    find_label_conflicts,
    find_leakage,
    write_manifest,
)
from sightwise.errors import SightwiseError
from sightwise.models.io import ensemble_meta, save_weights
from sightwise.models.registry import get_spec
from sightwise.train.allocator import keep_freed_memory
from sightwise.train.budget import Budget
from sightwise.train.choices import choose_image_size
from sightwise.train.strategies import Trained, run_strategy
from sightwise.types import Skipped


@dataclass
class PreparedData:
    dataset: Dataset
    cache: ImageCache
    skipped: list[Skipped]
    leakage: list[dict]
    manifest_sha256: str
    decode_seconds: float
    preprocessing: Preprocessing
    choices: dict = field(default_factory=dict)  # what train decided by itself (choices.py)


def resolve_preprocessing(cfg: TrainConfig, ds: Dataset | None = None,
                          budget: Budget | None = None, choices: dict | None = None
                          ) -> Preprocessing:
    """The backbone's own preprocessing at the size `choices.choose_image_size` picks
    (--img-size; the backbone's, smaller for small images, larger for fine detail when the
    budget allows); the decision is recorded in `choices["image_size"]` when given."""
    pre = get_spec(cfg.model_name).preprocessing
    choice = choose_image_size(cfg, pre, ds, budget)
    if choices is not None:
        choices["image_size"] = choice
    return replace(pre, size=choice["value"])


def prepare_data(cfg: TrainConfig, run_dir: Path, log, budget: Budget | None = None) -> PreparedData:
    """Load, decode once (skipping bad files), split, check leakage, write the manifest."""
    t0 = time.perf_counter()
    ds = load_dataset(cfg.data, labels=cfg.labels, allow_outside=cfg.allow_outside)
    choices: dict = {}
    pre = resolve_preprocessing(cfg, ds, budget, choices)
    log(f"input: {pre.size}x{pre.size} px ({pre.resize}, {pre.interpolation}): "
        f"{choices['image_size']['reason']}")
    cache, skipped = build_cache(ds, pre, memmap_dir=run_dir / "cache", workers=cfg.workers,
                                 progress=cfg.progress)
    for s in skipped:
        log(f"skipped {s.source}: {s.reason}")
    kept = Dataset(ds.classes, cache.samples, ds.root, ds.layout, ds.notes)
    check_usable(cache, ds.classes)
    kept = assign_splits(kept, seed=cfg.split_seed)
    for group in find_label_conflicts(kept):
        where = " and ".join(f"{src} (labelled {label}, {split})" for src, label, split in group["items"])
        log(f"labelling error: identical images with different labels: {where}")
    leakage = find_leakage(kept)
    if leakage:
        log(f"leakage: {len(leakage)} identical file(s) appear in more than one split"
            + ("; dropping the copies outside train" if cfg.drop_leakage else
               " (use --drop-leakage to remove them)"))
    if leakage and cfg.drop_leakage:
        kept, _ = drop_leakage(kept)
    cache = _realign(cache, kept)
    manifest_sha = write_manifest(kept, run_dir / "manifest.csv")
    for note in kept.notes:
        log(note)
    return PreparedData(kept, cache, skipped, leakage, manifest_sha, time.perf_counter() - t0, pre,
                        choices)


def _realign(cache: ImageCache, ds: Dataset) -> ImageCache:
    """The cache follows the dataset after splits were assigned or leaked copies dropped."""
    pos = {s.source: i for i, s in enumerate(cache.samples)}
    idx = np.array([pos[s.source] for s in ds.samples], np.int64)
    images = cache.images if len(idx) == len(cache.samples) else cache.images[idx]
    return ImageCache(images=images, labels=np.array([s.label for s in ds.samples], np.int64),
                      splits=np.array([s.split for s in ds.samples]), samples=list(ds.samples))


def run_training(cfg: TrainConfig, log=print) -> dict:
    """Train, evaluate, report and bundle; returns the metrics dict (also metrics.json)."""
    from sightwise.train.evaluation import evaluate_and_report

    run_dir = Path(cfg.out)
    check_out(run_dir, cfg.overwrite)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        keep_freed_memory()  # feature extraction and training reuse freed blocks (allocator.py)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        budget = Budget(cfg.budget_s)
        data = prepare_data(cfg, run_dir, log, budget)
        if cfg.synthetic:  # train/synthetic.py: generated images join train only if they help
            from sightwise.train.synthetic import apply_synthetic, record_synthetic
            data, synthetic = apply_synthetic(cfg, data, log)
        pre = data.preprocessing
        log(_summary(data))
        trained = run_strategy(cfg, pre, data.cache, len(data.dataset.classes), budget, log,
                               choices=data.choices)
        metrics = evaluate_and_report(cfg, pre, data, trained, run_dir, budget, log)
        if cfg.synthetic:
            record_synthetic(run_dir, metrics, synthetic)
        write_bundle(cfg, pre, data, trained, metrics, run_dir / "bundle")
    except BaseException:
        if created:  # a failed run leaves nothing behind it made
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return metrics


def check_out(run_dir: Path, overwrite: bool) -> None:
    """Refuse to replace a trained bundle (and its export) unless asked to."""
    if (run_dir / "bundle").exists() and not overwrite:
        raise SightwiseError(f"{run_dir / 'bundle'} already exists; pass --overwrite to replace "
                             "it, or choose another --out")


def _summary(data: PreparedData) -> str:
    counts = data.dataset.counts()
    parts = [f"{split}={sum(v.values())}" for split, v in sorted(counts.items())]
    return (f"{len(data.dataset.classes)} classes, {len(data.cache.samples)} images "
            f"({', '.join(parts)}), {len(data.skipped)} skipped; "
            f"decoded in {data.decode_seconds:.1f}s")


def write_bundle(cfg, pre, data: PreparedData, trained: Trained, metrics: dict, out: Path) -> None:
    """Write the bundle in a hidden folder beside `out`, then swap it in: a run that fails
    here leaves the previous bundle (if any) as it was."""
    final, out = out, Path(tempfile.mkdtemp(dir=out.parent, prefix=".bundle-"))
    try:
        _write_bundle_files(cfg, pre, data, trained, metrics, out)
        if final.exists():
            old = final.with_name(f".old-{final.name}-{os.getpid()}")
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(out, final)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _write_bundle_files(cfg, pre, data: PreparedData, trained: Trained, metrics: dict,
                        out: Path) -> None:
    os.chmod(out, 0o755)  # mkdtemp makes 0700; a bundle is read by servers and users
    save_weights(trained.model, out / "weights.safetensors")
    (out / "manifest.csv").write_bytes((Path(cfg.out) / "manifest.csv").read_bytes())
    report = Path(cfg.out) / "report.html"
    if report.exists():
        (out / "report.html").write_bytes(report.read_bytes())
    meta = {
        "task": "classification",
        "classes": data.dataset.classes,
        "model": {"name": cfg.model_name, "num_classes": len(data.dataset.classes),
                  "num_features": trained.model.num_features, "strategy": trained.strategy,
                  **ensemble_meta(trained.model)},
        "preprocessing": pre.to_dict(),
        "calibration": {"method": "temperature" if metrics["calibration"]["applied"] else "none",
                        **metrics["calibration"]},
        "metrics": {"test": {k: metrics["test"][k] for k in
                             ("n", "accuracy", "macro_f1", "auroc", "ece", "ece_uncalibrated")}},
        "data": {"manifest_sha256": data.manifest_sha256, "root": str(Path(data.dataset.root).resolve()),
                 "layout": data.dataset.layout},
        "config": cfg.to_dict(),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_bundle_meta(out, meta)
