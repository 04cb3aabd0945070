"""Find faces (MTCNN, from facenet-pytorch) and blur or box them.

MTCNN (Zhang et al. 2016) is a cascade of three small CNNs; facenet-pytorch ships their
weights inside the package, so nothing is downloaded. We load the three state dicts with
`torch.load(weights_only=True)` (tensors only, never a pickle that runs code) and call the
package's own `detect_face` cascade. torch and facenet-pytorch are imported only when a
detector is built: the rest of sightwise.privacy stays torch-free (`faces` extra).

Large photos are searched at most `max_side` pixels on their long side (faces smaller than
`min_face` pixels at that scale are missed): the cascade's first stage costs time in
proportion to the pixel count, and 1280 px keeps a face of ~2 % of a 12-megapixel frame.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFilter

INSTALL_HINT = ("face detection needs torch and facenet-pytorch: pip install "
                "'sightwise[faces]' (facenet-pytorch with --no-deps beside your torch)")


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in the image's pixels
    score: float

    def to_dict(self) -> dict:
        return {"kind": "face", "box": [round(v, 1) for v in self.box],
                "score": round(self.score, 4)}


def faces_available() -> bool:
    """True when torch and facenet-pytorch can be imported (without importing them)."""
    try:
        return all(importlib.util.find_spec(m) is not None for m in ("torch", "facenet_pytorch"))
    except (ImportError, ValueError):  # a blocked or broken installation
        return False


class FaceDetector:
    """MTCNN on the CPU. `min_score` is the final (O-Net) probability a face must reach."""

    def __init__(self, *, min_score: float = 0.9, min_face: int = 20, max_side: int = 1280,
                 threads: int | None = None):
        if not faces_available():
            raise RuntimeError(INSTALL_HINT)
        import torch
        from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

        if threads:
            torch.set_num_threads(threads)
        self.min_score, self.min_face, self.max_side = min_score, min_face, max_side
        folder = os.path.join(os.path.dirname(importlib.util.find_spec("facenet_pytorch").origin),
                              "data")
        self._nets = []
        for cls, name in ((PNet, "pnet"), (RNet, "rnet"), (ONet, "onet")):
            net = cls(pretrained=False)  # the package's own loader uses a plain torch.load
            weights = os.path.join(folder, f"{name}.pt")
            state = torch.load(weights, map_location="cpu", weights_only=True)  # tensors only
            net.load_state_dict(state)
            self._nets.append(net.eval())

    def detect(self, image: Image.Image) -> list[Face]:
        """Faces in an image (any mode), largest score first."""
        import numpy as np
        import torch
        from facenet_pytorch.models.utils.detect_face import detect_face

        rgb = image.convert("RGB")
        scale = min(1.0, self.max_side / max(rgb.size))
        if scale < 1.0:
            rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))),
                             Image.Resampling.BILINEAR)
        if min(rgb.size) < 12:  # the cascade's smallest window
            return []
        with torch.inference_mode():
            boxes, _ = detect_face(np.asarray(rgb), self.min_face, *self._nets,
                                   [0.6, 0.7, 0.7], 0.709, torch.device("cpu"))
        rows = np.asarray(boxes[0], dtype=np.float64).reshape(-1, 5)
        faces = [Face(tuple(float(v) / scale for v in row[:4]), float(row[4]))
                 for row in rows if row[4] >= self.min_score]
        return sorted(faces, key=lambda f: -f.score)


def blur_faces(image: Image.Image, faces: list[Face] | None = None, *, mode: str = "blur",
               detector: FaceDetector | None = None, pad: float = 0.25) -> Image.Image:
    """A copy of `image` with every face blurred (or, mode="box", filled black).

    Faces are found with `detector` (a default one is built) unless given. Each box grows
    by `pad` of its size on every side (MTCNN boxes are tight: hair and ears identify too);
    the blur radius scales with the face, so a big face is as unreadable as a small one.
    """
    if mode not in ("blur", "box"):
        raise ValueError(f"mode must be 'blur' or 'box', not {mode!r}")
    if faces is None:
        faces = (detector or FaceDetector()).detect(image)
    out = image.copy()
    for face in faces:
        x0, y0, x1, y1 = _padded(face.box, pad, out.size)
        if x1 <= x0 or y1 <= y0:
            continue
        if mode == "box":
            ImageDraw.Draw(out).rectangle((x0, y0, x1 - 1, y1 - 1), fill=_black(out))
            continue
        region = out.crop((x0, y0, x1, y1))
        small = region.resize((max(1, (x1 - x0) // 12), max(1, (y1 - y0) // 12)),
                              Image.Resampling.BOX)  # pixelate first: no detail survives
        region = small.resize(region.size, Image.Resampling.BILINEAR)
        region = region.filter(ImageFilter.GaussianBlur(max(2.0, (x1 - x0) / 16)))
        out.paste(region, (x0, y0))
    return out


def _padded(box, pad: float, size: tuple[int, int]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * pad, (y1 - y0) * pad
    w, h = size
    return (max(0, int(x0 - dx)), max(0, int(y0 - dy)),
            min(w, int(round(x1 + dx))), min(h, int(round(y1 + dy))))


def _black(image: Image.Image):
    bands = len(image.getbands())
    return 0 if bands == 1 else (0,) * bands
