"""The ImageNet backbone bundle: the runtime's `embedding` equals the PyTorch backbone's
pooled features (the reference), and the bundle says task "embedding"."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from sightwise.bundle import load_bundle
from sightwise.export.backbone import write_backbone_bundle
from sightwise.models.classifier import build_classifier
from sightwise.runtime import Predictor


def test_backbone_bundle_embeds_like_torch(tmp_path):
    out = write_backbone_bundle(tmp_path / "bb", img_size=64)
    bundle = load_bundle(out)
    assert bundle.task == "embedding" and bundle.meta.raw["model"]["num_features"] == 1280
    p = Predictor(bundle, threads=1)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (80, 70, 3), np.uint8)) for _ in range(2)]
    got = p.embed(images)
    model = build_classifier("efficientnet_lite0", 1, pretrained=True).eval()
    with torch.no_grad():
        x = torch.from_numpy(p.preprocess(images))
        ref = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)
