"""A small residual CNN for training from scratch on small inputs (28-128 px).

Four stages of two 3x3 residual blocks (He et al. 2016), widths 32-256, each stage halving
the resolution; about 2.8 M parameters. It ends in a feature map, like every backbone here,
so the same pooled-linear head, CAM and export apply.
"""

from __future__ import annotations

import torch
from torch import nn

from sightwise.data.preprocess import Preprocessing
from sightwise.models.registry import register_backbone


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.skip(x))


class SmallResNet(nn.Module):
    def __init__(self, widths=(32, 64, 128, 256)):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(True)
        )
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers += [_Block(cin, w, stride), _Block(w, w, 1)]
            cin = w
        self.stages = nn.Sequential(*layers)
        self.num_features = widths[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


@register_backbone(
    "small_resnet",
    preprocessing=Preprocessing(size=64, resize="stretch", interpolation="bilinear"),
    has_pretrained=False,
    description="small residual CNN for training from scratch on small images",
)
def small_resnet(pretrained: bool = False) -> nn.Module:
    return SmallResNet()
