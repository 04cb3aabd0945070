"""EfficientNet-Lite0 with offline ImageNet weights (sightwise.models.efficientnet).

The acceptance test: the packaged weights, mapped onto timm's architecture and fed
scikit-image's sample photos preprocessed as LITE0_PRE says, class the cat as ImageNet 285
("Egyptian cat") and the coffee as 967 ("espresso"). Weights load once per module.
"""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import timm
import torch
from PIL import Image

from sightwise.data.preprocess import normalize, resize_rgb
from sightwise.models.classifier import Classifier
from sightwise.models.efficientnet import (
    LITE0_PRE,
    imagenet_classifier,
    lite0_imagenet_state_dict,
)
from sightwise.models.registry import create_backbone, get_spec

EGYPTIAN_CAT, ESPRESSO = 285, 967


@pytest.fixture(scope="module")
def imagenet():
    """(model, input batch [chelsea, coffee], ImageNet probabilities)."""
    torch.manual_seed(0)
    model = imagenet_classifier()
    photos = [skimage.data.chelsea(), skimage.data.coffee()]
    batch = np.stack([resize_rgb(Image.fromarray(p), LITE0_PRE) for p in photos])
    x = torch.from_numpy(normalize(batch, LITE0_PRE))
    with torch.no_grad():
        probs = model(x).softmax(dim=1)
    return model, x, probs


def test_preprocessing_is_what_the_weights_expect():
    assert LITE0_PRE.size == 224 and LITE0_PRE.resize == "stretch"
    assert LITE0_PRE.interpolation == "bicubic"
    assert LITE0_PRE.mean == (0.5, 0.5, 0.5) and LITE0_PRE.std == (0.5, 0.5, 0.5)
    assert get_spec("efficientnet_lite0").preprocessing == LITE0_PRE


def test_inputs_are_scaled_to_minus_one_one(imagenet):
    _, x, _ = imagenet
    assert x.shape == (2, 3, 224, 224)
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.min() < -0.9 and x.max() > 0.9


def test_chelsea_is_an_egyptian_cat(imagenet):
    _, _, probs = imagenet
    assert int(probs[0].argmax()) == EGYPTIAN_CAT
    assert float(probs[0, EGYPTIAN_CAT]) > 0.7


def test_coffee_is_an_espresso(imagenet):
    _, _, probs = imagenet
    assert int(probs[1].argmax()) == ESPRESSO
    assert float(probs[1, ESPRESSO]) > 0.7


def test_state_dict_maps_onto_timm_tensor_for_tensor():
    sd = lite0_imagenet_state_dict()
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    expected = [k for k in ref if not k.endswith("num_batches_tracked")]
    assert list(sd) == expected
    for k in expected:
        assert sd[k].shape == ref[k].shape and sd[k].dtype == ref[k].dtype
    assert sd["classifier.weight"].shape == (1000, 1280)


def test_pretrained_backbone_with_the_imagenet_head_reproduces_timm(imagenet):
    """Our Classifier (mean pool + linear) on the registry's backbone, given the ImageNet
    head, must give timm's full model's logits: the backbone loaded the same weights."""
    model, x, probs = imagenet
    backbone = create_backbone("efficientnet_lite0", pretrained=True)
    assert backbone.num_features == 1280
    clf = Classifier(backbone, num_classes=1000).eval()
    clf.head.load_state_dict({"weight": model.classifier.weight, "bias": model.classifier.bias})
    with torch.no_grad():
        logits, emb, feats = clf.forward_all(x)
        ref_feats = model.forward_features(x)
    assert feats.shape == (2, 1280, 7, 7)
    torch.testing.assert_close(feats, ref_feats, rtol=0, atol=0)
    torch.testing.assert_close(logits.softmax(1), probs, rtol=1e-5, atol=1e-6)


def test_scratch_backbone_has_fresh_weights():
    scratch = create_backbone("efficientnet_lite0", pretrained=False).state_dict()
    sd = lite0_imagenet_state_dict()
    assert "classifier.weight" not in scratch  # num_classes=0: a feature extractor
    assert not torch.equal(scratch["conv_stem.weight"], sd["conv_stem.weight"])
