"""An "embedding" bundle of the pretrained ImageNet EfficientNet-Lite0, for visual search.

No training: the graph is the ordinary three-output export (`export_onnx`) of a classifier
whose backbone carries the offline ImageNet weights, so its `embedding` output is the
backbone's pooled 1280-d feature vector. The linear head is a placeholder with one output
(class "embedding"), kept only so the bundle has the shape every bundle has; with
task "embedding" it must not be read as a classifier (its logits mean nothing).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import torch

from sightwise.bundle import write_bundle_meta
from sightwise.data.preprocess import Preprocessing
from sightwise.export.onnx_export import export_onnx, save_head
from sightwise.models.classifier import build_classifier
from sightwise.models.registry import get_spec

BACKBONE = "efficientnet_lite0"


def write_backbone_bundle(out: str | Path, *, img_size: int = 224,
                          backbone: str = BACKBONE) -> Path:
    """Write the bundle folder `out` (replaced whole, atomically by rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    spec = get_spec(backbone)
    pre = Preprocessing(**{**spec.preprocessing.to_dict(), "size": int(img_size)})
    torch.manual_seed(0)  # the placeholder head's weights: reproducible bytes
    model = build_classifier(backbone, num_classes=1, pretrained=True).eval()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        stage = Path(tmp) / "bundle"
        stage.mkdir()
        export_onnx(model, pre.size, stage / "model.onnx")
        save_head(model, stage / "head.npz")
        write_bundle_meta(stage, {
            "task": "embedding",
            "classes": ["embedding"],
            "model": {"name": backbone, "num_classes": 1,
                      "num_features": int(model.num_features), "strategy": "pretrained",
                      "weights": "imagenet"},
            "preprocessing": pre.to_dict(),
            "calibration": {"method": "none", "temperature": 1.0},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    return out
