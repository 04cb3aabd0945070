"""Classifier (sightwise.models.classifier) and its safetensors round trip (models.io)."""

from __future__ import annotations

import pytest
import torch

from sightwise.bundle import load_bundle, write_bundle_meta
from sightwise.models.classifier import Classifier, build_classifier
from sightwise.models.io import load_classifier, save_weights


def _trained_like(name: str, size: int, num_classes: int = 3) -> Classifier:
    """A classifier whose BatchNorm statistics moved away from their defaults."""
    torch.manual_seed(0)
    model = build_classifier(name, num_classes, pretrained=False).train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, size, size) * 2 + 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def small():
    return _trained_like("small_resnet", 32)


def test_build_classifier_shapes(small):
    assert small.num_features == 256
    assert small.head.in_features == 256 and small.head.out_features == 3
    with torch.no_grad():
        assert small(torch.randn(5, 3, 32, 32)).shape == (5, 3)


def test_build_classifier_respects_the_pretrained_rule():
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_classifier("small_resnet", 3, pretrained=True)


def test_forward_all_is_consistent(small):
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits, emb, feats = small.forward_all(x)
        assert feats.shape == (3, 256, 4, 4) and emb.shape == (3, 256) and logits.shape == (3, 3)
        torch.testing.assert_close(emb, feats.mean((2, 3)), rtol=0, atol=0)
        torch.testing.assert_close(logits, small.head(emb), rtol=0, atol=0)
        torch.testing.assert_close(feats, small.forward_features(x), rtol=0, atol=0)
        torch.testing.assert_close(small.forward_head(feats, pre_logits=True), emb, rtol=0, atol=0)
        torch.testing.assert_close(small(x), logits, rtol=0, atol=0)  # eval: dropout is off
        # pool-then-linear: the logit is the mean over positions of a per-position linear map
        # (what makes the class activation map exact)
        cam = torch.einsum("kc,nchw->nkhw", small.head.weight, feats)
        torch.testing.assert_close(cam.mean((2, 3)) + small.head.bias, logits, rtol=1e-5, atol=1e-5)


def test_dropout_only_acts_in_training():
    model = build_classifier("small_resnet", 2, pretrained=False)
    model.dropout.p = 0.9
    feats = torch.randn(4, 256, 2, 2)
    model.eval()
    torch.testing.assert_close(model.forward_head(feats), model.head(feats.mean((2, 3))))
    model.train()
    torch.manual_seed(1)
    assert not torch.allclose(model.forward_head(feats), model.head(feats.mean((2, 3))))


@pytest.mark.parametrize("name, size", [("small_resnet", 32), ("efficientnet_lite0", 64)])
def test_weights_round_trip_through_a_bundle(tmp_path, name, size):
    model = _trained_like(name, size)
    save_weights(model, tmp_path / "weights.safetensors")
    assert not list(tmp_path.glob("*.tmp"))  # written atomically
    write_bundle_meta(tmp_path, {"model": {"name": name, "num_classes": 3},
                                 "classes": ["a", "b", "c"]})
    loaded = load_classifier(load_bundle(tmp_path))
    assert not loaded.training
    ref_state, new_state = model.state_dict(), loaded.state_dict()
    assert list(new_state) == list(ref_state)
    for k, v in ref_state.items():
        assert torch.equal(new_state[k], v), k
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        got = loaded(x)
        torch.testing.assert_close(got, model(x), rtol=1e-5, atol=1e-6)
        # the loader returns channels_last; in the same memory format, bit-identical
        model.to(memory_format=torch.channels_last)
        assert torch.equal(got, model(x))
