"""Image features for the audit: the frozen ImageNet backbone (what the linear probe uses),
or, with a bundle, its ONNX graph's embeddings (no torch needed).

Both decode through the same cache code `train` uses, so unreadable images are reported by
path and skipped the same way. Torch is imported only inside `backbone_features`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sightwise.data.datasets import Dataset
from sightwise.types import Sample, Skipped


@dataclass
class Features:
    vectors: np.ndarray  # (n, D) float32, one row per kept sample
    samples: list[Sample]  # the samples that decoded, aligned with `vectors`
    skipped: list[Skipped]
    source: str  # "backbone <name> @ <size>px" or "bundle <path>"
    seconds: float = 0.0


def backbone_features(ds: Dataset, *, model: str | None = None, img_size: int | None = None,
                      progress: bool = True, log: Callable[[str], None] = print) -> Features:
    """Pooled features of the frozen ImageNet backbone at the size `train` would pick."""
    import time

    from sightwise.config import TrainConfig
    from sightwise.data.cache import build_cache
    from sightwise.models.registry import create_backbone
    from sightwise.train.features import extract_features, frozen_extractor
    from sightwise.train.pipeline import resolve_preprocessing

    t0 = time.perf_counter()
    cfg = TrainConfig(data=str(ds.root), out=".", strategy="linear-probe", model=model,
                      img_size=img_size, progress=progress)
    pre = resolve_preprocessing(cfg, ds)
    cache, skipped = build_cache(ds, pre, progress=progress)
    for s in skipped:
        log(f"skipped {s.source}: {s.reason}")
    backbone = create_backbone(cfg.model_name, pretrained=True).eval()
    extractor = frozen_extractor(backbone, pre, n_images=len(cache.images))
    feats = extract_features(extractor, cache.images, pre, progress=progress, desc="features")
    return Features(feats.astype(np.float32), cache.samples, skipped,
                    f"backbone {cfg.model_name} @ {pre.size}px", time.perf_counter() - t0)


def bundle_features(ds: Dataset, bundle: str, *, batch_size: int = 32, progress: bool = True,
                    log: Callable[[str], None] = print) -> Features:
    """The bundle's pooled embeddings (its ONNX graph, onnxruntime only)."""
    import time

    from tqdm.auto import tqdm

    from sightwise.data.cache import load_one
    from sightwise.data.preprocess import normalize
    from sightwise.errors import ImageDecodeError
    from sightwise.runtime import Predictor

    t0 = time.perf_counter()
    pred = Predictor(bundle, batch_size=batch_size)
    pre = pred.preprocessing
    kept, skipped, parts, chunk = [], [], [], []

    def flush():
        if chunk:
            parts.append(pred.run(normalize(np.stack(chunk), pre), ["embedding"])["embedding"])
            chunk.clear()

    for s in tqdm(ds.samples, desc="embed", disable=not progress, unit="img", leave=False):
        try:
            chunk.append(load_one(s, pre))
        except ImageDecodeError as exc:
            skipped.append(Skipped(s.source, str(exc)))
            log(f"skipped {s.source}: {exc}")
            continue
        kept.append(s)
        if len(chunk) == batch_size:
            flush()
    flush()
    dim = pred.bundle.meta.num_features or 0
    vectors = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, dim), np.float32)
    return Features(vectors, kept, skipped, f"bundle {bundle}", time.perf_counter() - t0)


def cached_backbone_features(ds: Dataset, cache_file, *, progress: bool = True,
                             log: Callable[[str], None] = print, **kwargs) -> Features:
    """`backbone_features`, kept in an .npz (benchmarks rerun in seconds). The cache is used
    only when it holds exactly the same sources in the same order."""
    from pathlib import Path

    from sightwise.core import atomic_write_bytes

    path = Path(cache_file)
    sources = [s.source for s in ds.samples]
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if z["sources"].tolist() == sources:
                kept = set(z["kept"].tolist())
                samples = [s for s in ds.samples if s.source in kept]
                skipped = [Skipped(src, str(why)) for src, why in zip(
                    z["skipped"].tolist(), z["reasons"].tolist(), strict=True)]
                return Features(z["vectors"], samples, skipped, str(z["source"]), 0.0)
    feats = backbone_features(ds, progress=progress, log=log, **kwargs)
    import io

    buf = io.BytesIO()
    np.savez(buf, vectors=feats.vectors, sources=np.array(sources),
             kept=np.array([s.source for s in feats.samples]),
             skipped=np.array([s.source for s in feats.skipped], dtype=str),
             reasons=np.array([s.reason for s in feats.skipped], dtype=str),
             source=np.array(feats.source))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return feats
