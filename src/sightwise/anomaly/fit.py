"""`sightwise inspect fit`: good images -> a detector bundle (imports torch).

Steps: seeded hold-out of good images -> export the multi-stage extractor to ONNX (checked
against PyTorch) -> patch features of the fit images through that graph (the same graph
the torch-free scorer runs) -> coreset memory bank -> threshold at the target false-alarm
rate on the held-out good images (and, with defect images, the F1-optimal one).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from sightwise.anomaly.detector import SIGMA, Detector, content_grid
from sightwise.anomaly.extractor import (
    DEFAULT_PAD,
    DEFAULT_STAGES,
    build_extractor,
    export_extractor,
    torch_features,
)
from sightwise.anomaly.metrics import image_auroc
from sightwise.anomaly.patchcore import PatchCore, f1_threshold, far_threshold
from sightwise.anomaly.scoring import list_images
from sightwise.bundle import atomic_write_bytes, write_bundle_meta
from sightwise.data.decode import decode_image
from sightwise.data.preprocess import normalize, resize_rgb
from sightwise.errors import ImageDecodeError
from sightwise.models.registry import get_spec

PARITY_TOL = 1e-4


@dataclass(frozen=True)
class FitConfig:
    backbone: str = "efficientnet_lite0"
    img_size: int = 224
    # letterbox keeps each image's aspect ratio: crops of a part can be far from square, and
    # stretching each to a square changes its texture's proportions from image to image,
    # which a memory bank of textures reads as defects (docs/experiments/)
    resize: str = "letterbox"
    coreset: float = 0.1
    false_alarm_rate: float = 0.01
    holdout: float = 0.2
    threshold_mode: str = "far"  # "far" | "f1" (f1 needs defect images)
    seed: int = 0
    stages: tuple[int, ...] = DEFAULT_STAGES
    pad: int = DEFAULT_PAD  # reflection around the image before the backbone (pixels)
    border: int = 2  # patches at the map's edge left out of the image score
    threads: int | None = None
    max_images: int | None = None  # a seeded subset of the good images (None: all)
    synthetic: str | None = None  # "combined" | "head": a head trained on synthetic defects


def split_good(files: list[Path], cfg: FitConfig) -> tuple[list[Path], list[Path]]:
    """Seeded (fit, held-out) split of the good images."""
    order = np.random.default_rng(cfg.seed).permutation(len(files))
    if cfg.max_images:
        order = order[: cfg.max_images]
    n_hold = max(1, int(round(cfg.holdout * len(order))))
    if len(order) - n_hold < 1:
        raise ValueError(f"need at least 2 good images, got {len(order)}")
    return [files[i] for i in sorted(order[n_hold:])], [files[i] for i in sorted(order[:n_hold])]


def load_batch(files: list[Path], pre) -> tuple[np.ndarray, list[Path], list[tuple[int, int]]]:
    """Decode + resize + normalise; unreadable files are skipped and reported.
    -> (inputs, the files kept, their (width, height))."""
    arrs, kept, sizes = [], [], []
    for f in files:
        try:
            img = decode_image(f)
            arrs.append(resize_rgb(img, pre))
            kept.append(f)
            sizes.append(img.size)
        except ImageDecodeError as exc:
            print(f"skipped {f}: {exc}")
    if not arrs:
        raise ValueError("no readable images")
    return normalize(np.stack(arrs), pre), kept, sizes


def fit_detector(good: str | Path, out: str | Path, cfg: FitConfig = FitConfig(),
                 defects: str | Path | None = None) -> dict:
    """Fit and write the detector bundle in `out`; returns bundle.json's content."""
    if cfg.threshold_mode not in ("far", "f1"):
        raise ValueError(f"threshold mode must be 'far' or 'f1', got {cfg.threshold_mode!r}")
    if cfg.resize not in ("letterbox", "stretch"):  # a centre crop would hide the sides
        raise ValueError(f"resize must be 'letterbox' or 'stretch', got {cfg.resize!r}")
    if cfg.synthetic not in (None, "combined", "head"):
        raise ValueError(f"synthetic mode must be 'combined' or 'head', got {cfg.synthetic!r}")
    if cfg.threshold_mode == "f1" and defects is None:
        raise ValueError("--threshold-mode f1 needs --defects")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pre = replace(get_spec(cfg.backbone).preprocessing, size=cfg.img_size, resize=cfg.resize)
    fit_files, held = split_good(list_images(good), cfg)

    model = build_extractor(cfg.backbone, cfg.stages, pad=cfg.pad)
    export_extractor(model, cfg.img_size, out / "extractor.onnx")
    x_fit, fit_files, sizes = load_batch(fit_files, pre)
    parity = _check_parity(model, out / "extractor.onnx", x_fit[:2], cfg)
    feats = _onnx_features(out / "extractor.onnx", x_fit, cfg.threads)
    content = content_grid(pre, sizes, feats.shape[2:])
    core = PatchCore(cfg.coreset, seed=cfg.seed, threads=cfg.threads, border=cfg.border).fit(
        feats, content)
    buf = io.BytesIO()
    np.save(buf, core.memory_bank, allow_pickle=False)
    atomic_write_bytes(out / "memory.npy", buf.getvalue())
    if cfg.synthetic:  # anomaly/synthetic.py: the scorer becomes bank + head (or head alone)
        from sightwise.anomaly.synthetic import fit_synthetic
        core, synthetic = fit_synthetic(core, feats, content, fit_files, held, pre,
                                        out / "extractor.onnx", out, cfg.synthetic, cfg.seed,
                                        cfg.threads)

    held_scores = _scores(core, out / "extractor.onnx", held, pre, cfg.threads)
    thresholds = {"far": {"value": far_threshold(held_scores, cfg.false_alarm_rate),
                          "target_false_alarm_rate": cfg.false_alarm_rate}}
    metrics = {"n_fit": len(fit_files), "n_holdout": len(held_scores), "memory_bank": len(core.memory_bank),
               "patches_total": int(content.sum()),  # the images' own patches, before the coreset
               "onnx_max_abs_diff": parity}
    if defects is not None:
        def_scores = _scores(core, out / "extractor.onnx", list_images(defects), pre, cfg.threads)
        s = np.concatenate([held_scores, def_scores])
        y = np.r_[np.zeros(len(held_scores), bool), np.ones(len(def_scores), bool)]
        t, f1 = f1_threshold(s, y)
        thresholds["f1"] = {"value": t, "f1": f1}
        metrics.update(n_defect=len(def_scores), image_auroc=image_auroc(s, y))
    chosen = thresholds[cfg.threshold_mode]["value"]
    metrics["holdout_false_alarm_rate"] = float(np.mean(held_scores > chosen))
    meta = _meta(cfg, pre, feats.shape, chosen, thresholds, metrics)
    if cfg.synthetic:
        meta["anomaly"]["synthetic"] = synthetic
    return write_bundle_meta(out, meta)


def _meta(cfg, pre, shape, chosen, thresholds, metrics) -> dict:
    return {
        "task": "anomaly", "classes": ["ok", "defect"], "backbone": cfg.backbone,
        "preprocessing": pre.to_dict(),
        "anomaly": {"method": "patchcore", "stages": list(cfg.stages), "reflect_pad": cfg.pad,
                    "feature_dim": int(shape[1]),
                    "grid": [int(shape[2]), int(shape[3])], "coreset": cfg.coreset,
                    "projection_dim": 128, "seed": cfg.seed, "smoothing_sigma": SIGMA,
                    "border": cfg.border,
                    "image_score": f"max patch distance over the image's own patches, "
                                   f"{cfg.border} in from its edges"},
        "threshold": chosen, "threshold_mode": cfg.threshold_mode, "thresholds": thresholds,
        "metrics": metrics, "config": {k: (list(v) if isinstance(v, tuple) else v)
                                       for k, v in cfg.__dict__.items()},
    }


def _scores(core: PatchCore, extractor: Path, files: list[Path], pre, threads) -> np.ndarray:
    x, _, sizes = load_batch(files, pre)
    feats = _onnx_features(extractor, x, threads)
    return core.score(feats, content_grid(pre, sizes, feats.shape[2:]))[0]


def _onnx_features(path: Path, x: np.ndarray, threads: int | None, batch: int = 16) -> np.ndarray:
    from sightwise.core import make_session

    sess = make_session(path, threads)
    return np.concatenate([sess.run(["features"], {"image": x[i:i + batch]})[0]
                           for i in range(0, len(x), batch)])


def _check_parity(model, onnx_path: Path, x: np.ndarray, cfg: FitConfig) -> float:
    """ONNX vs PyTorch features on real inputs; refuse a graph that disagrees."""
    diff = float(np.abs(_onnx_features(onnx_path, x, cfg.threads) - torch_features(model, x)).max())
    if diff > PARITY_TOL:
        raise RuntimeError(f"exported extractor disagrees with PyTorch: max |diff| {diff:.2e}")
    return diff


__all__ = ["FitConfig", "fit_detector", "Detector"]
