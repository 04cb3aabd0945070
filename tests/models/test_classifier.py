"""Classifier (sightwise.models.classifier) and its safetensors round trip (models.io)."""

from __future__ import annotations

import pytest
import torch

from sightwise.bundle import load_bundle, write_bundle_meta
from sightwise.data.preprocess import Preprocessing
from sightwise.models.classifier import Classifier, EnsembleBackbone, average_of, build_classifier
from sightwise.models.io import ensemble_meta, load_classifier, save_weights


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


def _pre(size: int) -> dict:
    return Preprocessing(size=size, resize="center-crop", interpolation="bilinear").to_dict()


@pytest.mark.parametrize("name, size", [("small_resnet", 32), ("efficientnet_lite0", 64)])
def test_weights_round_trip_through_a_bundle(tmp_path, name, size):
    model = _trained_like(name, size)
    save_weights(model, tmp_path / "weights.safetensors")
    assert not list(tmp_path.glob("*.tmp"))  # written atomically
    write_bundle_meta(tmp_path, {"model": {"name": name, "num_classes": 3},
                                 "classes": ["a", "b", "c"], "preprocessing": _pre(size)})
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


def _members(n: int, num_classes: int = 3) -> list[Classifier]:
    out = []
    for k in range(n):
        torch.manual_seed(10 + k)
        m = _trained_like("small_resnet", 32, num_classes)
        with torch.no_grad():  # heads that differ, as fine-tuned members' do
            m.head.weight.normal_()
            m.head.bias.normal_()
        out.append(m)
    return out


@pytest.mark.parametrize("hflip", [False, True])
def test_average_of_is_the_mean_of_the_views_logits_and_maps(hflip):
    members = _members(3)
    avg = average_of(members, hflip=hflip)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        views = [x, x.flip(-1)] if hflip else [x]
        ref = torch.stack([m(v) for m in members for v in views]).mean(0)
        logits, emb, feats = avg.forward_all(x)
        torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)
        assert emb.shape == (4, 256 * len(members) * len(views))
        # the ensemble's class activation map is the mean of the members' maps, each mirrored
        # view's map mirrored back onto the input
        ref_maps = torch.stack([
            torch.einsum("kc,nchw->nkhw", m.head.weight, m.forward_features(v)).flip(-1)
            if v is not x else torch.einsum("kc,nchw->nkhw", m.head.weight, m.forward_features(x))
            for m in members for v in views]).mean(0)
        got_maps = torch.einsum("kc,nchw->nkhw", avg.head.weight, feats)
        torch.testing.assert_close(got_maps, ref_maps, rtol=1e-5, atol=1e-5)


def test_an_averaged_ensemble_round_trips_through_a_bundle(tmp_path):
    avg = average_of(_members(2), hflip=True)
    save_weights(avg, tmp_path / "weights.safetensors")
    meta = {"name": "small_resnet", "num_classes": 3, **ensemble_meta(avg)}
    assert meta["members"] == 2 and meta["hflip"] is True
    write_bundle_meta(tmp_path, {"model": meta, "classes": ["a", "b", "c"],
                                 "preprocessing": _pre(32)})
    loaded = load_classifier(load_bundle(tmp_path))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), avg(x), rtol=1e-5, atol=1e-5)
    assert ensemble_meta(build_classifier("small_resnet", 3, pretrained=False)) == {}


def test_average_of_one_model_without_mirroring_is_that_model():
    (one,) = _members(1)
    assert average_of([one]) is one
    assert isinstance(average_of([one], hflip=True).backbone, EnsembleBackbone)
    with pytest.raises(ValueError, match="at least one model"):
        average_of([])
