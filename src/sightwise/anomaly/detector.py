"""Torch-free defect scoring from a detector bundle: ONNX patch features + FAISS.

`Detector(path)` loads `extractor.onnx` and `memory.npy` (allow_pickle=False) from a bundle
whose bundle.json has task "anomaly"; `inspect(images)` gives per-image scores, verdicts and
heat maps. Heat maps follow PatchCore (Roth et al., CVPR 2022, Sec. 3.3): the patch score
map is bilinearly upsampled to the input resolution and smoothed by a Gaussian, sigma = 4.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import distance_transform_edt, gaussian_filter

from sightwise.anomaly.patchcore import PatchCore
from sightwise.anomaly.synthetic import attach_head
from sightwise.bundle import Bundle, load_bundle
from sightwise.core import make_session
from sightwise.data.preprocess import Preprocessing, normalize, resize_rgb
from sightwise.errors import BundleError
from sightwise.heatmap import colorize, upsample

SIGMA = 4.0  # PatchCore's Gaussian smoothing of the upsampled map


@dataclass(frozen=True)
class Inspection:
    score: float
    verdict: str  # "ok" | "defect"
    patch_map: np.ndarray  # (h, w) raw patch distances on the network's input square


def content_grid(pre: Preprocessing, sizes: Sequence[tuple[int, int]], grid: tuple[int, int]) -> np.ndarray:
    """(N, h, w) bool: the patches whose centre lies on the image itself (under letterbox
    the rest of the input square is mirrored fill), for images of (width, height) `sizes`.
    An image thinner than a patch still gets the row (column) of patches it runs through."""
    h, w = grid
    out = np.zeros((len(sizes), h, w), bool)
    for k, size in enumerate(sizes):
        left, top, bw, bh = pre.content_box(*size)
        out[k] = _cells(top, bh, h, pre.size)[:, None] & _cells(left, bw, w, pre.size)[None, :]
    return out


def _cells(start: int, length: int, n: int, size: int) -> np.ndarray:
    """Which of `n` cells across `size` pixels have their centre in [start, start+length);
    the cell holding the span's middle when none has."""
    centres = (np.arange(n) + 0.5) * size / n
    inside = (centres >= start) & (centres < start + length)
    if not inside.any():
        inside[min(n - 1, int((start + length / 2) * n / size))] = True
    return inside


def fill_outside(patch_map: np.ndarray, content: np.ndarray) -> np.ndarray:
    """`patch_map` with every cell off the image given its nearest on-image cell's value, so
    smoothing does not carry the mirrored fill's scores into the image's edges."""
    if content.all() or not content.any():
        return patch_map
    _, (iy, ix) = distance_transform_edt(~content, return_indices=True)
    return patch_map[iy, ix]


def load_memory(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        return np.load(f, allow_pickle=False)


def smooth_map(patch_map: np.ndarray, size: int, sigma: float = SIGMA) -> np.ndarray:
    """(h, w) patch scores -> (size, size) pixel scores: bilinear upsampling + Gaussian."""
    return gaussian_filter(upsample(patch_map, (size, size)), sigma=sigma)


class Detector:
    """A fitted detector bundle, scored with onnxruntime and FAISS only."""

    def __init__(self, bundle_or_path: Bundle | str | Path, *, threads: int | None = None):
        b = bundle_or_path if isinstance(bundle_or_path, Bundle) else load_bundle(bundle_or_path)
        if b.task != "anomaly":
            raise BundleError(f"{b.path}: task is {b.task!r}, not an anomaly detector")
        self.bundle = b
        self.pre = b.preprocessing
        self.session = make_session(b.file("extractor.onnx"), threads)
        border = int(b.meta.section("anomaly").get("border", 0))
        self.core = attach_head(PatchCore(1.0, threads=threads, border=border).set_bank(
            load_memory(b.file("memory.npy"))), b)  # with --synthetic: bank + head (synthetic.py)
        threshold = b.meta.raw.get("threshold")
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) \
                or not np.isfinite(threshold):
            raise BundleError(f"{b.path}: bundle.json threshold must be a finite number, "
                              f"found {threshold!r}")
        self.threshold = float(threshold)

    def features(self, images: Sequence[Image.Image], batch_size: int = 16) -> np.ndarray:
        out = []
        for s in range(0, len(images), batch_size):
            arr = np.stack([resize_rgb(im.convert("RGB"), self.pre) for im in images[s:s + batch_size]])
            out.append(self.session.run(["features"], {"image": normalize(arr, self.pre)})[0])
        return np.concatenate(out) if out else np.zeros((0, 1, 1, 1), np.float32)

    def inspect(self, images: Sequence[Image.Image]) -> list[Inspection]:
        if not images:
            return []
        feats = self.features(images)
        content = content_grid(self.pre, [im.size for im in images], feats.shape[2:])
        scores, maps = self.core.score(feats, content)
        return [Inspection(float(s), "defect" if s > self.threshold else "ok", m)
                for s, m in zip(scores, maps, strict=True)]

    def pixel_map(self, patch_map: np.ndarray, image_size: tuple[int, int] | None = None) -> np.ndarray:
        """Smoothed (S, S) map of the image (used for pixel metrics, against masks resized
        to S x S): at the network's input resolution, and for a letterboxed image of
        (width, height) `image_size` its own part of the input, stretched to S x S."""
        s = self.pre.size
        return self._image_heat(patch_map, image_size, (s, s))

    def _image_heat(self, patch_map: np.ndarray, image_size: tuple[int, int] | None,
                    out_size: tuple[int, int]) -> np.ndarray:
        """The smoothed map of the image's own part of the input, resized to `out_size`."""
        s = self.pre.size
        box = self.pre.content_box(*image_size) if image_size else (0, 0, s, s)
        left, top, w, h = box
        if (w, h) != (s, s):
            content = content_grid(self.pre, [image_size], patch_map.shape)[0]
            patch_map = fill_outside(patch_map, content)
        heat = smooth_map(patch_map, s)[top:top + h, left:left + w]
        return heat if (w, h) == out_size else upsample(heat, out_size)

    def overlay(self, image: Image.Image, patch_map: np.ndarray, alpha: float = 0.5) -> Image.Image:
        """Heat map over `image` at the image's own size. The colour scale runs from 0 to
        twice the image threshold (the threshold at mid-scale, so good images compare),
        stretched to the map's maximum when that is higher, so a defect's location stays
        visible instead of saturating."""
        base = image.convert("RGB")
        heat = self._image_heat(patch_map, base.size, base.size)
        top = max(2.0 * self.threshold, float(heat.max()), 1e-12)
        coloured = Image.fromarray(colorize(np.clip(heat / top, 0.0, 1.0)))
        return Image.blend(base, coloured, alpha)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()
