"""Decode and resize every image once into a uint8 array; no epoch decodes a JPEG again.

Small sets live in memory; above `memmap_bytes` the array is a memory-mapped .npy file in
the run folder so a few hundred thousand images do not need the RAM.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sightwise.data.datasets import NPZ_SCHEME, Dataset, read_npz_image
from sightwise.data.decode import DEFAULT_MAX_PIXELS, array_to_image, decode_image
from sightwise.data.preprocess import Preprocessing, resize_rgb
from sightwise.errors import DataError, ImageDecodeError
from sightwise.types import Sample, Skipped


@dataclass
class ImageCache:
    """images[i] is samples[i] decoded and resized; labels/splits are aligned arrays."""

    images: np.ndarray  # (N, S, S, 3) uint8
    labels: np.ndarray  # (N,) int64
    splits: np.ndarray  # (N,) str
    samples: list[Sample]

    def subset(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        m = self.splits == split
        return self.images[m], self.labels[m]

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)


def load_one(sample: Sample, pre: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS):
    if sample.source.startswith(NPZ_SCHEME):
        img = array_to_image(read_npz_image(sample.source))
    else:
        img = decode_image(sample.source, max_pixels=max_pixels)
    return resize_rgb(img, pre)


def build_cache(
    ds: Dataset,
    pre: Preprocessing,
    *,
    memmap_dir: Path | None = None,
    memmap_bytes: int = 2 << 30,
    workers: int = 2,
    progress: bool = True,
) -> tuple[ImageCache, list[Skipped]]:
    """Decode all of `ds`; unusable images are returned as `Skipped`, never raised."""
    samples = ds.samples
    npz_arrays = _preload_npz(samples)
    shape = (len(samples), pre.size, pre.size, 3)
    out = _allocate(shape, memmap_dir, memmap_bytes)
    ok = np.zeros(len(samples), bool)
    skipped: list[Skipped] = []

    def work(i: int):
        s = samples[i]
        try:
            if s.source in npz_arrays:
                return i, resize_rgb(array_to_image(npz_arrays[s.source]), pre), None
            return i, load_one(s, pre), None
        except ImageDecodeError as exc:
            return i, None, str(exc)

    # Pillow releases the GIL while decoding, so threads overlap decode and resize.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        it = pool.map(work, range(len(samples)))
        for i, arr, err in tqdm(it, total=len(samples), desc="decode", disable=not progress,
                                unit="img", leave=False):
            if err is None:
                out[i] = arr
                ok[i] = True
            else:
                skipped.append(Skipped(samples[i].source, err))
    keep = np.flatnonzero(ok)
    images = out if len(keep) == len(samples) else out[keep]
    kept = [samples[i] for i in keep]
    cache = ImageCache(
        images=images,
        labels=np.array([s.label for s in kept], np.int64),
        splits=np.array([s.split or "train" for s in kept]),
        samples=kept,
    )
    return cache, skipped


def _preload_npz(samples: list[Sample]) -> dict[str, np.ndarray]:
    """Open each .npz once instead of once per image."""
    files: dict[str, list[Sample]] = {}
    for s in samples:
        if s.source.startswith(NPZ_SCHEME):
            files.setdefault(s.source[len(NPZ_SCHEME):].rsplit("#", 1)[0], []).append(s)
    out = {}
    for file, group in files.items():
        with np.load(file, allow_pickle=False) as z:
            arrays = {}
            for s in group:
                split, idx = s.source.rsplit("#", 1)[1].split("/")
                if split not in arrays:
                    arrays[split] = z[f"{split}_images"]
                out[s.source] = arrays[split][int(idx)]
    return out


def _allocate(shape, memmap_dir: Path | None, memmap_bytes: int) -> np.ndarray:
    nbytes = int(np.prod(shape))
    if memmap_dir is not None and nbytes > memmap_bytes:
        memmap_dir.mkdir(parents=True, exist_ok=True)
        return np.lib.format.open_memmap(memmap_dir / "cache.npy", "w+", np.uint8, shape)
    return np.zeros(shape, np.uint8)


def check_usable(cache: ImageCache, classes: list[str]) -> None:
    """Stop early, with one clear line, when training cannot make sense."""
    counts = np.bincount(cache.labels, minlength=len(classes))
    present = [c for c, n in zip(classes, counts, strict=True) if n > 0]
    if len(present) < 2:
        raise DataError(
            f"need at least 2 classes with usable images, found {len(present)}: {present}"
        )
    few = [f"{c} ({n})" for c, n in zip(classes, counts, strict=True) if n < 2]
    if few:
        raise DataError("every class needs at least 2 usable images; too few: " + ", ".join(few))
    train = cache.labels[cache.splits == "train"]
    if len(set(train.tolist())) < 2:
        raise DataError("the training split holds fewer than 2 classes")
