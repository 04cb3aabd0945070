"""CAM from the ONNX graph + head.npz against Grad-CAM computed with PyTorch autograd."""


import numpy as np
import pytest
import torch
from PIL import Image

from sightwise.data.cache import load_one
from sightwise.export.manifest import bundle_samples
from sightwise.models.io import load_classifier
from sightwise.runtime import Predictor, overlay_cam
from sightwise.runtime.cam import JET, class_activation_map, colorize
from sightwise.train.augment import to_input


def _grad_cam(model, x: torch.Tensor, c: int) -> np.ndarray:
    """Selvaraju et al. 2017: weights = spatially averaged d logit_c / d features."""
    feats = model.forward_features(x).detach().requires_grad_(True)
    logits = model.forward_head(feats)
    logits[0, c].backward()
    weights = feats.grad.mean(dim=(2, 3), keepdim=True)
    m = torch.relu((weights * feats).sum(dim=1))[0].detach().numpy()
    return m / m.max() if m.max() > 0 else m


@pytest.mark.parametrize("which", ["top", "other"])
def test_cam_equals_grad_cam(exported, which):
    p = Predictor(exported[0])
    model = load_classifier(p.bundle)
    sample = bundle_samples(p.bundle, "test")[0]
    image = Image.open(sample.source)
    top = int(p.probabilities([image])[0].argmax())
    c = None if which == "top" else (top + 1) % len(p.classes)
    got, index, probs = p.cam(image, c)
    assert index == (top if c is None else c)
    np.testing.assert_allclose(probs, p.probabilities([image])[0], atol=1e-6)
    x = to_input(torch.from_numpy(np.array(load_one(sample, p.preprocessing))[None]), p.preprocessing)
    want = _grad_cam(model, x, index)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert got.min() >= 0.0 and got.max() <= 1.0
    np.testing.assert_allclose(got, want, atol=2e-3)


def test_cam_class_index_is_checked(exported):
    p = Predictor(exported[0])
    img = Image.new("RGB", (30, 30), (120, 60, 30))
    with pytest.raises(ValueError, match="class_index"):
        p.cam(img, len(p.classes))


def test_cam_is_zero_when_nothing_supports_the_class():
    features = np.ones((3, 2, 2), np.float32)
    assert not class_activation_map(features, -np.ones((1, 3)), 0).any()


def test_colormap_runs_blue_to_red_without_matplotlib():
    assert JET.shape == (256, 3) and JET.dtype == np.uint8
    assert JET[0, 2] > JET[0, 0] and JET[-1, 0] > JET[-1, 2]  # cold blue, hot red
    assert tuple(colorize(np.array([[0.5]]))[0, 0]) == tuple(JET[128])


def test_overlay_has_the_image_size_and_blends():
    image = Image.new("L", (37, 23), 200)
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0] = 1.0
    out = overlay_cam(image, heat, alpha=0.5)
    assert out.size == (37, 23) and out.mode == "RGB"
    arr = np.asarray(out).astype(int)
    assert arr[0, 0, 0] > arr[-1, -1, 0]  # the hot corner is redder
    np.testing.assert_array_equal(np.asarray(overlay_cam(image, heat, alpha=0.0)),
                                  np.asarray(image.convert("RGB")))
    with pytest.raises(ValueError, match="alpha"):
        overlay_cam(image, heat, alpha=1.5)
