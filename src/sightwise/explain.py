"""`sightwise explain`: the class activation map of one image, drawn at the image's size.

Uses the ONNX graph through `sightwise.runtime` when the bundle has one (what the server
and edge devices compute), else the PyTorch weights.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from sightwise.bundle import atomic_write_bytes, load_bundle
from sightwise.data.decode import decode_image
from sightwise.errors import SightwiseError
from sightwise.heatmap import overlay_cam
from sightwise.predict import has_gated_onnx


def explain_image(bundle_ref: str, image_path: str, out: str, *,
                  class_name: str | None = None) -> tuple[str, float]:
    """Write the overlay PNG; return (explained class, its calibrated probability)."""
    from sightwise.registry.resolve import resolve_bundle

    # NAME@ALIAS, NAME/VERSION or a folder; resolve_bundle verifies every file's sha256.
    bundle = load_bundle(resolve_bundle(bundle_ref), verify=False)
    classes = bundle.classes
    if class_name is not None and class_name not in classes:
        raise SightwiseError(f"unknown class {class_name!r}; classes: {', '.join(classes)}")
    idx = None if class_name is None else classes.index(class_name)
    img = decode_image(image_path)
    if has_gated_onnx(bundle):
        from sightwise.runtime import Predictor

        cam, idx, probs = Predictor(bundle).cam(img, idx)
    else:
        cam, idx, probs = _torch_cam(bundle, img, idx)
    overlay = overlay_cam(img, cam)
    buf = io.BytesIO()
    overlay.save(buf, "PNG")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(out), buf.getvalue())
    return classes[idx], float(probs[idx])


def _torch_cam(bundle, img, idx):
    import torch

    from sightwise.data.preprocess import normalize, resize_rgb
    from sightwise.models.cam import class_activation_map
    from sightwise.models.io import load_classifier

    model = load_classifier(bundle)
    pre = bundle.preprocessing
    x = torch.from_numpy(normalize(resize_rgb(img, pre)[None], pre))
    cls = None if idx is None else torch.tensor([idx])
    cams, used = class_activation_map(model, x, cls)
    with torch.inference_mode():
        z = model(x).numpy()[0] / bundle.temperature
    probs = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    return cams[0].numpy(), int(used[0]), probs
