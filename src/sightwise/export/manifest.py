"""The images export needs: a split of the bundle's own manifest, or a calibration folder.

`manifest.csv` paths are relative to bundle.json's `data.root` (array files are written
``npz://<file name>#<split>/<index>``); they are resolved against it here, decoded and
resized with the bundle's preprocessing through the trainer's own cache code.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from sightwise.bundle import Bundle, sha256_path
from sightwise.data.cache import build_cache
from sightwise.data.datasets import NPZ_SCHEME, Dataset
from sightwise.data.decode import is_image_path
from sightwise.data.preprocess import Preprocessing
from sightwise.errors import DataError
from sightwise.types import Sample


def bundle_samples(bundle: Bundle, split: str) -> list[Sample]:
    """Samples of `split` from the bundle's manifest, sources made absolute."""
    root = Path(bundle.meta.data.get("root", "."))
    index = {c: i for i, c in enumerate(bundle.classes)}
    with open(bundle.file("manifest.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        if row["split"] != split:
            continue
        if row["label"] not in index:
            raise DataError(f"manifest.csv names class {row['label']!r}, not in bundle.json")
        out.append(Sample(_resolve(row["path"], root), index[row["label"]], split, row["sha256"]))
    return out


def _resolve(path: str, root: Path) -> str:
    if path.startswith(NPZ_SCHEME):
        file, frag = path[len(NPZ_SCHEME):].rsplit("#", 1)
        return f"{NPZ_SCHEME}{(root / file).resolve()}#{frag}"
    p = Path(path)
    return str(p if p.is_absolute() else root / p)


def unchanged(samples: list[Sample], log) -> list[Sample]:
    """Drop files whose bytes no longer match the manifest: numbers about other images
    than the ones trained and tested on would not be honest. (Array sources are checked
    by the training run's manifest hash only.)"""
    kept, changed = [], []
    for s in samples:
        if s.source.startswith(NPZ_SCHEME) or not s.sha256 or not Path(s.source).is_file():
            kept.append(s)  # missing files are reported by the decoder
        elif sha256_path(Path(s.source)) == s.sha256:
            kept.append(s)
        else:
            changed.append(s.source)
    if changed:
        log(f"skipped {len(changed)} image(s) changed since training, e.g. {changed[0]}")
    return kept


def folder_samples(folder: str | Path) -> list[Sample]:
    """Every image file under `folder` (recursively) as an unlabelled sample."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"calibration folder not found: {root}")
    files = sorted(f for f in root.rglob("*") if f.is_file() and is_image_path(f))
    if not files:
        raise DataError(f"{root}: no images for calibration")
    return [Sample(str(f), 0, "train", "") for f in files]


def seeded_subset(samples: list[Sample], n: int, seed: int) -> list[Sample]:
    """At most `n` samples, the same ones for the same seed (order kept)."""
    if len(samples) <= n:
        return list(samples)
    pick = np.sort(np.random.default_rng(seed).choice(len(samples), size=n, replace=False))
    return [samples[i] for i in pick]


def load_images(
    samples: list[Sample], pre: Preprocessing, log, *, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Decode + resize (uint8 N,S,S,3) and labels; unusable images are logged, skipped."""
    if not samples:
        raise DataError(f"no {what} images")
    ds = Dataset(classes=[], samples=samples, root=Path("."), layout="manifest")
    cache, skipped = build_cache(ds, pre, progress=False)
    for s in skipped[:5]:
        log(f"skipped {what} image {s.source}: {s.reason}")
    if len(skipped) > 5:
        log(f"skipped {len(skipped) - 5} more {what} image(s)")
    if len(cache.samples) == 0:
        raise DataError(f"none of the {len(samples)} {what} images could be read "
                        f"(first: {samples[0].source}); is bundle.json data.root still valid?")
    return np.asarray(cache.images), cache.labels
