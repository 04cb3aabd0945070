"""Backbone + global-average-pool + linear head: the one classifier shape we train.

The head is deliberately pool-then-linear: then the class activation map (Zhou et al.,
CVPR 2016) is exact, and the pooled vector is the search embedding (DESIGN.md principle 2).
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


def build_classifier(name: str, num_classes: int, pretrained: bool) -> Classifier:
    return Classifier(create_backbone(name, pretrained=pretrained), num_classes)
