"""The multi-stage patch-feature extractor (PyTorch) and its ONNX export.

PatchCore (Roth et al., CVPR 2022, Sec. 3.1) takes mid-level features: deep enough to be
semantic, shallow enough to keep locality and stay close to ImageNet-generic texture
statistics. The deeper maps are bilinearly upsampled to the shallowest one's grid, all are
concatenated, and a 3x3 average pool (stride 1) makes each patch aware of its neighbours.
All of it lives in the exported graph, so the torch-free scorer only runs ONNX.

Lite0's mid-level stages (2 and 4) alone miss defects that are a change of the whole
surface rather than a local mark: a patch sees too little of the part to tell an uneven
surface from an even one. The last stage (6, 320 channels at /32) sees that much, so the
default takes stages 2, 4 and 6 (the measurements are in docs/experiments/).

The image is reflect-padded before the backbone and the feature map cropped back to the
image's grid after it. Without that, patches at the border see the network's zero padding,
which good images do not share evenly (a tile's edge, a bright rim), and the image score,
a maximum, is then taken at the border. Reflection gives border patches the image's own
texture instead (docs/experiments/ has what it gained).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from sightwise.bundle import atomic_write_bytes
from sightwise.export.onnx_export import fold_static_shapes
from sightwise.models.registry import create_backbone

INPUT_NAME = "image"
OUTPUT_NAME = "features"
# Lite0 (timm `blocks`): blocks.2 is 40 ch at /8, blocks.4 112 ch at /16, blocks.6 320 ch at /32.
DEFAULT_STAGES = (2, 4, 6)
DEFAULT_PAD = 32  # pixels of reflection on each side (a multiple of the deepest stride, 32)


class PatchFeatures(nn.Module):
    """image (N,3,S,S) -> locally averaged patch features (N, C2+C4+C6, S/8, S/8)."""

    def __init__(self, backbone: nn.Module, stages: tuple[int, ...] = DEFAULT_STAGES,
                 pad: int = DEFAULT_PAD):
        super().__init__()
        if pad < 0 or pad % 8:
            raise ValueError(f"padding must be a non-negative multiple of 8 pixels, got {pad}")
        self.pad = int(pad)
        if not hasattr(backbone, "blocks"):
            raise ValueError("the patch extractor needs a timm EfficientNet-style `blocks` backbone")
        self.stem = nn.Sequential(backbone.conv_stem, backbone.bn1)
        self.blocks = nn.ModuleList(list(backbone.blocks)[: max(stages) + 1])
        self.stages = tuple(sorted(stages))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, (self.pad,) * 4, mode="reflect")
        padded = x.shape[-1]
        x = self.stem(x)
        maps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stages:
                maps.append(x)
        size = maps[0].shape[-2:]
        maps = [maps[0]] + [F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                            for m in maps[1:]]
        feats = torch.cat(maps, dim=1)
        # count_include_pad=False: border patches average only real neighbours, so their
        # features are not shrunk toward zero (which would read as anomalous texture).
        feats = F.avg_pool2d(feats, 3, stride=1, padding=1, count_include_pad=False)
        if self.pad:  # back to the unpadded image's grid
            c = self.pad * feats.shape[-1] // padded
            feats = feats[:, :, c:-c, c:-c]
        return feats


def build_extractor(backbone: str = "efficientnet_lite0", stages=DEFAULT_STAGES,
                    pretrained: bool = True, pad: int = DEFAULT_PAD) -> PatchFeatures:
    return PatchFeatures(create_backbone(backbone, pretrained=pretrained), tuple(stages), pad).eval()


def export_extractor(model: PatchFeatures, size: int, path: Path, *, opset: int = 17) -> None:
    """Trace at batch 1, batch axis dynamic, spatial size fixed (as the classifier export:
    `fold_static_shapes` turns Conv2dSame's shape arithmetic into constant pads)."""
    model.eval()
    dummy = torch.zeros(1, 3, size, size)
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    with tempfile.TemporaryDirectory(dir=Path(path).parent, prefix=".onnx-") as tmp:
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings on timm's "same" padding
            torch.onnx.export(model, (dummy,), str(raw), input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_axes=axes,
                              opset_version=opset, do_constant_folding=True, dynamo=False)
        graph = fold_static_shapes(onnx.load(str(raw)), size)
    onnx.checker.check_model(graph)
    atomic_write_bytes(Path(path), graph.SerializeToString())


@torch.no_grad()
def torch_features(model: PatchFeatures, x: np.ndarray) -> np.ndarray:
    return model(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()
