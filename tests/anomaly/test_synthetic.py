"""`inspect fit --synthetic`: the discriminative head trained on synthetic defects, its
numpy scoring against the same weights run in PyTorch, the bundle it writes, and scoring it
with torch blocked."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sightwise.anomaly import synthetic
from sightwise.anomaly.detector import Detector
from sightwise.anomaly.metrics import image_auroc
from sightwise.bundle import load_bundle, write_bundle_meta
from sightwise.errors import BundleError

SMALL = synthetic.HeadConfig(steps=80, batch=128, hidden=64, max_defect_images=24)


@pytest.fixture(scope="module")
def synthetic_detector(inspection_data, tmp_path_factory):
    import torch

    from sightwise.anomaly.fit import FitConfig, fit_detector

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("synth-det") / "detector"
    plain, synthetic.DEFAULT_HEAD = synthetic.DEFAULT_HEAD, SMALL
    try:
        fit_detector(inspection_data["good"], out, FitConfig(img_size=64, coreset=0.5,
                                                             false_alarm_rate=0.1, threads=1,
                                                             synthetic="combined"))
    finally:
        synthetic.DEFAULT_HEAD = plain
    return out


def _scores(det: Detector, folder) -> np.ndarray:
    from PIL import Image

    files = sorted(p for p in folder.rglob("*.png"))
    return np.array([r.score for r in det.inspect([Image.open(f) for f in files])])


def test_bundle_records_the_head(synthetic_detector):
    b = load_bundle(synthetic_detector)  # discriminator.npz is hashed like every file
    assert b.has(synthetic.HEAD_FILE)
    info = b.meta.section("anomaly")["synthetic"]
    assert info["mode"] == "combined" and info["n_defect_images"] == 24
    assert info["patches"]["defect"] > 0 and set(info["normalisation"]) == {
        "head_mean", "head_std", "bank_mean", "bank_std"}
    with np.load(synthetic_detector / synthetic.HEAD_FILE, allow_pickle=False) as z:
        assert set(z.files) == {"mean", "std", "adapt_w", "adapt_b", "w1", "b1", "w2", "b2"}


def test_numpy_head_matches_torch(synthetic_detector):
    """Reference: the stored weights loaded into the torch modules the head was trained as."""
    import torch
    from torch import nn

    head = synthetic.DiscriminatorHead.load(synthetic_detector / synthetic.HEAD_FILE)
    a = head.a
    dim, hidden = a["w1"].shape[1], a["w1"].shape[0]
    adaptor, disc = nn.Linear(dim, dim), nn.Sequential(nn.Linear(dim, hidden), nn.LeakyReLU(0.2),
                                                       nn.Linear(hidden, 1))
    with torch.no_grad():
        for layer, w, b in ((adaptor, "adapt_w", "adapt_b"), (disc[0], "w1", "b1"), (disc[2], "w2", "b2")):
            layer.weight.copy_(torch.from_numpy(a[w]))
            layer.bias.copy_(torch.from_numpy(a[b]))
        x = np.random.default_rng(0).normal(size=(50, dim)).astype(np.float32) * a["std"] + a["mean"]
        ref = disc(adaptor(torch.from_numpy((x - a["mean"]) / a["std"])))[:, 0].numpy()
    np.testing.assert_allclose(head.logits(x), ref, rtol=1e-4, atol=1e-4)


def test_combined_and_head_alone_separate_planted_defects(synthetic_detector, inspection_data, tmp_path):
    det = Detector(synthetic_detector, threads=1)
    assert isinstance(det.core, synthetic.CombinedScorer)
    good, bad = _scores(det, inspection_data["test_good"]), _scores(det, inspection_data["defect"])
    assert image_auroc(np.r_[good, bad], np.r_[np.zeros(len(good)), np.ones(len(bad))]) == 1.0
    # the same bundle scoring with the head alone
    alone = tmp_path / "head-alone"
    import shutil

    shutil.copytree(synthetic_detector, alone)
    meta = load_bundle(alone).meta.to_dict()
    meta["anomaly"]["synthetic"]["mode"] = "head"
    write_bundle_meta(alone, meta)
    det_h = Detector(alone, threads=1)
    good_h, bad_h = _scores(det_h, inspection_data["test_good"]), _scores(det_h, inspection_data["defect"])
    assert bad_h.mean() > good_h.mean()
    feats = det.features([__import__("PIL.Image").Image.open(
        sorted((inspection_data["defect"] / "blob").iterdir())[0])])
    n = det.core.norm
    z_head = (det.core.head.patch_scores(feats) - n["head_mean"]) / n["head_std"]
    np.testing.assert_allclose(det_h.core.maps(feats), z_head, rtol=1e-5, atol=1e-5)


def test_incomplete_section_is_refused(synthetic_detector, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(synthetic_detector, broken)
    meta = load_bundle(broken).meta.to_dict()
    del meta["anomaly"]["synthetic"]["normalisation"]
    write_bundle_meta(broken, meta)
    with pytest.raises(BundleError, match="synthetic"):
        Detector(broken)


def test_patch_labels_follow_the_mask():
    """A mask filling one 8 x 8 cell: that patch is a defect, its 8 neighbours are left
    out (their receptive field sees it), every other patch is clean."""
    feats = np.arange(1 * 2 * 4 * 4, dtype=np.float32).reshape(1, 2, 4, 4)
    masks = np.zeros((1, 32, 32), bool)
    masks[0, 8:16, 16:24] = True  # cell (1, 2)
    pos, neg = synthetic.label_patches(feats, masks, np.ones((1, 4, 4), bool), synthetic.HeadConfig())
    np.testing.assert_array_equal(pos, feats[0, :, 1, 2][None])
    assert len(neg) == 16 - 9


SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "timm"):
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, Block())
    from PIL import Image
    from sightwise.anomaly.detector import Detector
    det = Detector(sys.argv[1], threads=1)
    print(json.dumps([r.score for r in det.inspect([Image.open(p) for p in sys.argv[2:]])]))
""")


def test_scoring_runs_without_torch(synthetic_detector, inspection_data):
    files = sorted((inspection_data["defect"] / "blob").iterdir())[:2]
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(synthetic_detector), *map(str, files)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    from PIL import Image

    here = [r.score for r in Detector(synthetic_detector, threads=1).inspect([Image.open(f) for f in files])]
    np.testing.assert_allclose(json.loads(run.stdout.strip().splitlines()[-1]), here, rtol=1e-5)
