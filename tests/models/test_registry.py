"""The backbone registry (sightwise.models.registry): names, duplicates, pretrained rules."""

from __future__ import annotations

import pytest
import torch

from sightwise.data.preprocess import Preprocessing
from sightwise.models import registry
from sightwise.models.registry import (
    create_backbone,
    get_spec,
    list_backbones,
    register_backbone,
)

TINY_PRE = Preprocessing(size=16)


class _Tiny(torch.nn.Module):
    num_features = 4

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward_features(self, x):
        return self.conv(x)


@pytest.fixture
def isolated_registry(monkeypatch):
    """A copy of the registry for tests that register names; the real one is untouched."""
    list_backbones()  # import the families first, so their registration is not lost
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    return registry._REGISTRY


def test_builtin_backbones_are_listed_sorted():
    names = [s.name for s in list_backbones()]
    assert names == sorted(names)
    assert {"efficientnet_lite0", "small_resnet"} <= set(names)


def test_specs_carry_their_preprocessing():
    lite0 = get_spec("efficientnet_lite0")
    assert lite0.has_pretrained and lite0.preprocessing == Preprocessing(
        size=224, resize="stretch", interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3
    )
    small = get_spec("small_resnet")
    assert not small.has_pretrained and small.preprocessing.size == 64


def test_registering_a_new_backbone_and_creating_it(isolated_registry):
    register_backbone("tiny_test", preprocessing=TINY_PRE, has_pretrained=False,
                      description="test")(lambda pretrained: _Tiny())
    assert "tiny_test" in [s.name for s in list_backbones()]
    model = create_backbone("tiny_test", pretrained=False)
    assert isinstance(model, _Tiny)
    assert model.forward_features(torch.zeros(1, 3, 8, 8)).shape == (1, 4, 8, 8)


def test_duplicate_registration_raises(isolated_registry):
    deco = register_backbone("tiny_dup", preprocessing=TINY_PRE, has_pretrained=False,
                             description="first")
    first = deco(lambda pretrained: _Tiny())
    with pytest.raises(ValueError, match="'tiny_dup' is already registered"):
        register_backbone("tiny_dup", preprocessing=TINY_PRE, has_pretrained=True,
                          description="second")(lambda pretrained: _Tiny())
    assert get_spec("tiny_dup").factory is first and get_spec("tiny_dup").description == "first"


def test_builtin_names_cannot_be_registered_again():
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("small_resnet", preprocessing=TINY_PRE, has_pretrained=False,
                          description="impostor")(lambda pretrained: _Tiny())
    assert get_spec("small_resnet").description != "impostor"


def test_unknown_name_raises_key_error_listing_known_names():
    with pytest.raises(KeyError) as info:
        create_backbone("resnet9000", pretrained=False)
    message = str(info.value)
    assert "unknown model 'resnet9000'" in message
    for spec in list_backbones():
        assert spec.name in message


def test_scratch_only_model_refuses_pretrained():
    with pytest.raises(ValueError, match="small_resnet has no pretrained weights"):
        create_backbone("small_resnet", pretrained=True)
    with pytest.raises(ValueError, match="no pretrained weights"):
        create_backbone("small_resnet")  # pretrained defaults to True


def test_small_resnet_feature_map():
    model = create_backbone("small_resnet", pretrained=False).eval()
    assert model.num_features == 256
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 3, 32, 32))
    assert feats.shape == (2, 256, 4, 4)  # three stride-2 stages
    params = sum(p.numel() for p in model.parameters())
    assert 2.0e6 < params < 3.5e6  # "about 2.8 M parameters"
