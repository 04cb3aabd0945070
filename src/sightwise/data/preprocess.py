"""Preprocessing that travels with the weights (torchvision's `Weights` idea).

The bundle, never the caller, says how to resize and normalise. Torch-free: the trainer's
cache and `sightwise.runtime` both call `resize_rgb`, so training and serving see the
same pixels (the parity test checks it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

RESIZE_MODES = ("stretch", "center-crop", "letterbox")
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes the network's input.

    `resize="stretch"` resizes the whole image to size x size (nothing cropped: a defect at
    the border stays visible); `"center-crop"` resizes the short side then crops the centre;
    `"letterbox"` resizes the long side to `size`, keeping the aspect ratio, and fills the
    rest of the square by mirroring the image (so textures keep their proportions and the
    network sees no artificial edge); `content_box` says where the image lies.
    """

    size: int = 224
    resize: str = "stretch"
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {self.resize!r}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"unknown interpolation {self.interpolation!r}")
        if not 8 <= self.size <= 1024:
            raise ValueError(f"image size {self.size} outside 8..1024")

    def to_dict(self) -> dict:
        return asdict(self)

    def content_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, width, height) of a `width` x `height` image inside the network's
        size x size input: the whole square except under letterbox.

        >>> Preprocessing(size=224, resize="letterbox").content_box(592, 246)
        (0, 65, 224, 93)
        """
        s = self.size
        if self.resize != "letterbox":
            return 0, 0, s, s
        scale = s / max(width, height)
        nw, nh = max(1, min(s, round(width * scale))), max(1, min(s, round(height * scale)))
        return (s - nw) // 2, (s - nh) // 2, nw, nh

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(
            size=int(d["size"]),
            resize=d["resize"],
            interpolation=d["interpolation"],
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
        )


def resize_rgb(img: Image.Image, pre: Preprocessing) -> np.ndarray:
    """RGB Pillow image -> uint8 array (size, size, 3)."""
    s = pre.size
    resample = _RESAMPLE[pre.interpolation]
    if pre.resize == "center-crop":
        w, h = img.size
        scale = s / min(w, h)
        nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
        img = img.resize((nw, nh), resample)
        left, top = (nw - s) // 2, (nh - s) // 2
        img = img.crop((left, top, left + s, top + s))
    elif pre.resize == "letterbox":
        left, top, nw, nh = pre.content_box(*img.size)
        inner = np.asarray(img.resize((nw, nh), resample), dtype=np.uint8)
        return np.pad(inner, ((top, s - nh - top), (left, s - nw - left), (0, 0)), mode="symmetric")
    else:
        img = img.resize((s, s), resample)
    return np.asarray(img, dtype=np.uint8)


def normalize(batch: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """uint8 (N,H,W,3) -> float32 (N,3,H,W) scaled to [0,1], minus mean, over std.

    >>> pre = Preprocessing(size=8)
    >>> normalize(np.full((1, 8, 8, 3), 255, np.uint8), pre)[0, :, 0, 0].tolist()
    [1.0, 1.0, 1.0]
    """
    x = batch.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    mean = np.asarray(pre.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(pre.std, np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x - mean) / std)
