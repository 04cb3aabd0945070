"""Heat-map colouring and overlays with numpy + Pillow only (no matplotlib, no torch).

Shared by the training report, `sightwise explain`, the runtime, the server and the
defect-inspection heat maps, so every surface draws the same colours.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def _lut() -> np.ndarray:
    """A 256-entry jet-like colormap (dark blue -> cyan -> yellow -> dark red), (256,3) uint8:
    each channel is a clipped triangle, as in matplotlib's `jet` definition."""
    x = np.linspace(0.0, 1.0, 256)
    r = np.clip(1.5 - np.abs(4.0 * x - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * x - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * x - 1.0), 0.0, 1.0)
    return (np.stack([r, g, b], axis=1) * 255.0 + 0.5).astype(np.uint8)


JET = _lut()


def colorize(values: np.ndarray) -> np.ndarray:
    """(h,w) floats in [0,1] -> (h,w,3) uint8 through the jet-like LUT.

    >>> colorize(np.array([[0.0, 1.0]])).tolist()
    [[[0, 0, 128], [128, 0, 0]]]
    """
    idx = np.clip(np.rint(np.asarray(values, np.float32) * 255.0), 0, 255).astype(np.uint8)
    return JET[idx]


def upsample(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h,w) float map -> (H,W) float32 by bilinear interpolation; size is (W, H) as in PIL."""
    heat = Image.fromarray(np.ascontiguousarray(values, np.float32))  # mode F
    return np.asarray(heat.resize(size, Image.Resampling.BILINEAR), np.float32)


def overlay_cam(image: Image.Image, cam: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Blend the heat map over `image`: upsampled bilinearly to the image's own size,
    `alpha` = weight of the heat map (0: image only, 1: heat map only)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = image.convert("RGB")
    coloured = Image.fromarray(colorize(upsample(cam, base.size)))
    return Image.blend(base, coloured, alpha)
