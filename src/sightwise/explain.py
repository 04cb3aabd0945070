"""`sightwise explain`: the class activation map of one image, drawn at the image's size,
computed by the bundle's ONNX graph (what the server and edge devices compute)."""

from __future__ import annotations

import io
from pathlib import Path

from sightwise.core import atomic_write_bytes
from sightwise.data.decode import decode_image
from sightwise.errors import SightwiseError
from sightwise.heatmap import overlay_cam
from sightwise.predict import open_predictor


def explain_image(bundle_ref: str, image_path: str, out: str, *, class_name: str | None = None,
                  threads: int | None = None) -> tuple[str, float]:
    """Write the overlay PNG; return (explained class, its calibrated probability)."""
    predictor = open_predictor(bundle_ref, threads=threads)
    classes = predictor.classes
    if class_name is not None and class_name not in classes:
        raise SightwiseError(f"unknown class {class_name!r}; classes: {', '.join(classes)}")
    idx = None if class_name is None else classes.index(class_name)
    img = decode_image(image_path)
    cam, idx, probs = predictor.cam(img, idx)
    buf = io.BytesIO()
    overlay_cam(img, cam).save(buf, "PNG")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(out), buf.getvalue())
    return classes[idx], float(probs[idx])
