"""Backbone + global-average-pool + linear head: the one classifier shape we train.

The head is deliberately pool-then-linear: then the class activation map (Zhou et al.,
CVPR 2016) is exact, and the pooled vector is the search embedding (DESIGN.md principle 2).

An ensemble keeps that shape. `average_of` puts several fine-tuned members (and, with
`hflip`, each member's view of the left-right mirrored image) side by side on the channel
axis of one feature map, under one linear head whose weights are the members' divided by
the number of views: its logits are exactly the mean of the views' logits, its class
activation map the mean of their maps, and export, the runtime and explanations need
nothing new.
"""

from __future__ import annotations

import torch
from torch import nn

from sightwise.models.registry import create_backbone


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, dropout: float = 0.2):
        super().__init__()
        self.backbone = backbone
        self.num_features = int(backbone.num_features)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        emb = features.mean(dim=(2, 3))
        return emb if pre_logits else self.head(self.dropout(emb))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, embedding, features) from one pass: what the ONNX graph exports."""
        feats = self.forward_features(x)
        emb = feats.mean(dim=(2, 3))
        return self.head(emb), emb, feats


class EnsembleBackbone(nn.Module):
    """Members' feature maps concatenated on the channel axis; with hflip also each member's
    map of the mirrored image, mirrored back so the maps stay aligned with the input."""

    def __init__(self, members: list[nn.Module], hflip: bool = False):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.hflip = bool(hflip)
        self.views = len(members) * (2 if hflip else 1)
        self.num_features = sum(int(m.num_features) for m in members) * (2 if hflip else 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not self.hflip:
            return torch.cat([m.forward_features(x) for m in self.members], dim=1)
        # Image and mirror image in one batch: each member is one set of nodes in the ONNX
        # graph (two calls gave every int8 convolution a second quantised bias and scales).
        n = x.shape[0]
        maps = [m.forward_features(torch.cat([x, x.flip(-1)], dim=0)) for m in self.members]
        return torch.cat([f[:n] for f in maps] + [f[n:].flip(-1) for f in maps], dim=1)


def build_classifier(name: str, num_classes: int, pretrained: bool, *, members: int = 1,
                     hflip: bool = False) -> Classifier:
    """One backbone, or (members > 1 or hflip) the ensemble shape `average_of` produces."""
    if members == 1 and not hflip:
        return Classifier(create_backbone(name, pretrained=pretrained), num_classes)
    body = EnsembleBackbone([create_backbone(name, pretrained=pretrained) for _ in range(members)], hflip)
    return Classifier(body, num_classes)


def average_of(models: list[Classifier], *, hflip: bool = False) -> Classifier:
    """One Classifier whose logits are the mean over members (and mirrored views) of theirs;
    a single model without mirroring is returned as it is."""
    if not models:
        raise ValueError("average_of needs at least one model")
    if len(models) == 1 and not hflip:
        return models[0].eval()
    num_classes = models[0].head.out_features
    out = Classifier(EnsembleBackbone([m.backbone for m in models], hflip), num_classes)
    repeat = 2 if hflip else 1
    with torch.no_grad():
        weight = torch.cat([m.head.weight for m in models] * repeat, dim=1) / out.backbone.views
        out.head.weight.copy_(weight)
        out.head.bias.copy_(torch.stack([m.head.bias for m in models]).mean(0))
    return out.eval()
