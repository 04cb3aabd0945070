"""A real, labelled dataset that needs no download: texture tiles from scikit-image.

scikit-image ships a few photographs and micrographs (brick wall, grass, gravel, the
Moon's surface, the Hubble deep field, an immunohistochemistry slide). Cut into
non-overlapping tiles, each photograph becomes one class: a small surface-inspection-like
problem that trains and reports end to end in minutes on a laptop CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SOURCES = ("brick", "grass", "gravel", "moon", "hubble_deep_field", "immunohistochemistry")


def make_texture_dataset(out: str | Path, *, tile: int = 64, per_class: int = 60,
                         seed: int = 0) -> Path:
    """Write `out/<class>/<class>_NNN.png`: `per_class` seeded non-overlapping tiles each."""
    import skimage.data

    out = Path(out)
    rng = np.random.default_rng(seed)
    for name in SOURCES:
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 3:
            img = img[..., :3]
        h, w = img.shape[:2]
        cells = [(r, c) for r in range(0, h - tile + 1, tile) for c in range(0, w - tile + 1, tile)]
        chosen = rng.choice(len(cells), size=min(per_class, len(cells)), replace=False)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(sorted(chosen)):
            r, c = cells[i]
            Image.fromarray(img[r:r + tile, c:c + tile]).save(folder / f"{name}_{k:03d}.png")
    return out
