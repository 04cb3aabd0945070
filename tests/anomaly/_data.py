"""Small generated inspection data, shared by tests/anomaly and the served page's test:
64 px striped textures; defects carry a bright blob, with a mask for it (masks mirror the
defect tree: same class folder, same stem, .png); and a detector fitted on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

BLOB = (40, 20, 10)  # centre row, centre column, radius (pixels, in a 64 x 72 image)


def texture(rng: np.random.Generator, h: int = 64, w: int = 72) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    phase = rng.uniform(0, 2 * np.pi)
    base = 110 + 40 * np.sin(xx / 3.0 + phase) + rng.normal(0, 6, (h, w))
    return np.clip(base, 0, 255)


def blob_mask(h: int = 64, w: int = 72) -> np.ndarray:
    cy, cx, r = BLOB
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def write_inspection_data(root: Path, n_good: int = 30, n_test_good: int = 6,
                          n_defect: int = 6, seed: int = 0) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    dirs = {k: root / k for k in ("good", "test_good", "defect", "masks")}
    for d in dirs.values():
        d.mkdir(parents=True)
    (dirs["defect"] / "blob").mkdir()
    (dirs["masks"] / "blob").mkdir()
    for i in range(n_good):
        Image.fromarray(texture(rng).astype(np.uint8)).save(dirs["good"] / f"g{i:03d}.png")
    for i in range(n_test_good):
        Image.fromarray(texture(rng).astype(np.uint8)).save(dirs["test_good"] / f"t{i:03d}.png")
    m = blob_mask()
    for i in range(n_defect):
        img = texture(rng)
        img[m] = 250
        Image.fromarray(img.astype(np.uint8)).save(dirs["defect"] / "blob" / f"d{i:03d}.png")
        Image.fromarray((m * 255).astype(np.uint8)).save(dirs["masks"] / "blob" / f"d{i:03d}.png")
    return dirs


def fit_small_detector(data: dict[str, Path], out: Path) -> Path:
    """A detector on the generated good images at 64 px (seconds on one thread)."""
    import torch

    from sightwise.anomaly.fit import FitConfig, fit_detector

    torch.set_num_threads(1)
    fit_detector(data["good"], out, FitConfig(img_size=64, coreset=0.5, false_alarm_rate=0.1,
                                              threads=1), defects=data["defect"])
    return out
