"""CAM (no gradients) equals Grad-CAM computed with autograd, up to a positive scale."""

import numpy as np
import pytest
import torch

from sightwise.models.cam import class_activation_map, grad_cam
from sightwise.models.classifier import build_classifier


@pytest.mark.parametrize("name,size", [("small_resnet", 48), ("efficientnet_lite0", 96)])
def test_cam_equals_grad_cam(name, size):
    torch.manual_seed(0)
    model = build_classifier(name, 5, pretrained=False).eval()
    x = torch.randn(3, 3, size, size)
    for c in range(5):
        idx = torch.full((3,), c)
        cam, used = class_activation_map(model, x, idx)
        ref = grad_cam(model, x, idx)
        assert torch.equal(used, idx)
        for a, b in zip(cam, ref, strict=True):
            if b.max() == 0:  # no positive evidence: both maps are empty
                assert a.max() == 0
                continue
            r = np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1]
            assert r > 0.99


def test_cam_defaults_to_predicted_class_and_is_normalised():
    torch.manual_seed(1)
    model = build_classifier("small_resnet", 3, pretrained=False).eval()
    x = torch.randn(2, 3, 32, 32)
    cam, idx = class_activation_map(model, x)
    assert torch.equal(idx, model(x).argmax(1))
    assert cam.shape == (2, 4, 4)
    assert float(cam.min()) >= 0.0 and float(cam.max()) <= 1.0 + 1e-6
