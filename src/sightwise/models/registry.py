"""A plain backbone registry: `create_backbone(name, pretrained)` (timm's `create_model`).

One model family per file registers its factories here; a duplicate name raises, as
torchvision's `register_model` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from sightwise.data.preprocess import Preprocessing


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    factory: Callable[[bool], nn.Module]
    preprocessing: Preprocessing  # what its pretrained weights expect
    has_pretrained: bool
    description: str


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(
    name: str, *, preprocessing: Preprocessing, has_pretrained: bool, description: str
):
    def deco(factory):
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = BackboneSpec(name, factory, preprocessing, has_pretrained, description)
        return factory

    return deco


def _ensure_loaded() -> None:
    # Importing the family modules registers them; done lazily so importing the registry
    # does no work (DESIGN.md: no work at import time).
    from sightwise.models import efficientnet, smallcnn  # noqa: F401


def list_backbones() -> list[BackboneSpec]:
    _ensure_loaded()
    return sorted(_REGISTRY.values(), key=lambda s: s.name)


def get_spec(name: str) -> BackboneSpec:
    _ensure_loaded()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown model {name!r}; known: {known}")
    return _REGISTRY[name]


def create_backbone(name: str, pretrained: bool = True) -> nn.Module:
    """A feature extractor answering `forward_features(x) -> (N, C, h, w)` and carrying
    `num_features` (= C)."""
    spec = get_spec(name)
    if pretrained and not spec.has_pretrained:
        raise ValueError(f"{name} has no pretrained weights; use pretrained=False (scratch)")
    return spec.factory(pretrained)
