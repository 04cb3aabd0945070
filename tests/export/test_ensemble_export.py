"""An averaged ensemble (members + mirrored views) exports like any classifier: one graph
whose three outputs match PyTorch and pass the parity gate, and the runtime's class
activation maps come from it unchanged."""

import json
import shutil

import numpy as np
import torch

from sightwise.bundle import load_bundle, write_bundle_meta
from sightwise.core import make_session
from sightwise.export.api import export_bundle
from sightwise.export.onnx_export import INPUT_NAME, OUTPUT_NAMES
from sightwise.models.classifier import average_of
from sightwise.models.io import ensemble_meta, load_classifier, save_weights


def test_an_ensemble_bundle_exports_with_parity(trained_bundle, tmp_path):
    dst = tmp_path / "ensemble"
    shutil.copytree(trained_bundle, dst)
    one, two = load_classifier(load_bundle(trained_bundle)), load_classifier(load_bundle(trained_bundle))
    with torch.no_grad():  # a second member that differs from the first
        two.head.weight.mul_(0.5)
    avg = average_of([one, two], hflip=True)
    save_weights(avg, dst / "weights.safetensors")
    meta = load_bundle(dst, verify=False).meta.to_dict()
    meta["model"] = {**meta["model"], "num_features": avg.num_features, **ensemble_meta(avg)}
    write_bundle_meta(dst, meta)

    parity = export_bundle(dst, log=lambda _m: None)
    assert parity["passed"], json.dumps(parity)
    bundle = load_bundle(dst)
    model = load_classifier(bundle)
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    got = make_session(bundle.file("model.onnx")).run(list(OUTPUT_NAMES), {INPUT_NAME: x})
    with torch.inference_mode():
        want = [t.numpy() for t in model.forward_all(torch.from_numpy(x))]
        members = [one(torch.from_numpy(v)).numpy() for v in (x, x[..., ::-1].copy())]
        members += [two(torch.from_numpy(v)).numpy() for v in (x, x[..., ::-1].copy())]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[0], np.mean(members, 0), rtol=1e-4, atol=1e-4)
    assert got[1].shape == (3, 4 * one.num_features)  # 2 members x 2 views, side by side
