"""Predictor against eager PyTorch on the same images, and its handling of bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sightwise.bundle import load_bundle, write_bundle_meta
from sightwise.data.cache import load_one
from sightwise.errors import BundleError
from sightwise.export.manifest import bundle_samples
from sightwise.models.io import load_classifier
from sightwise.runtime import Predictor
from sightwise.train.augment import to_input
from sightwise.types import Prediction


def _test_images(bundle, n=12):
    samples = bundle_samples(bundle, "test")[:n]
    return samples, [Image.open(s.source) for s in samples]


def _torch_reference(bundle, samples):
    """Calibrated probabilities and embeddings from eager PyTorch, fed the training path."""
    model = load_classifier(bundle)
    x = to_input(torch.from_numpy(np.stack([load_one(s, bundle.preprocessing) for s in samples])),
                 bundle.preprocessing)
    with torch.inference_mode():
        logits, emb, _ = model.forward_all(x)
    probs = torch.softmax(logits.double() / bundle.temperature, dim=1).numpy()
    return probs, emb.numpy()


def test_attributes_come_from_the_bundle(exported):
    p = Predictor(exported[0], threads=1, batch_size=4)
    bundle = load_bundle(exported[0])
    assert p.classes == bundle.classes and p.preprocessing == bundle.preprocessing
    assert p.temperature == bundle.temperature and p.bundle.path == bundle.path
    assert Predictor(bundle).bundle is bundle  # a loaded Bundle is used as is


def test_probabilities_and_embeddings_match_pytorch(exported):
    p = Predictor(exported[0], batch_size=5)  # 12 images: batches of 5, 5, 2
    samples, images = _test_images(p.bundle)
    probs, emb = _torch_reference(p.bundle, samples)
    np.testing.assert_allclose(p.probabilities(images), probs, atol=1e-3)
    np.testing.assert_allclose(p.embed(images), emb, rtol=1e-4, atol=1e-4)
    unit = p.embed(images, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(unit, emb / np.linalg.norm(emb, axis=1, keepdims=True), atol=1e-4)


def test_run_returns_the_three_outputs_and_checks_the_shape(exported):
    p = Predictor(exported[0])
    _, images = _test_images(p.bundle, 3)
    out = p.run(p.preprocess(images))
    s = p.preprocessing.size
    assert set(out) == {"logits", "embedding", "features"}
    assert out["logits"].shape == (3, len(p.classes))
    assert out["features"].shape[:2] == (3, p.bundle.meta.raw["model"]["num_features"])
    assert p.preprocess(images).shape == (3, 3, s, s)
    with pytest.raises(ValueError, match=r"\(N, 3, 64, 64\)"):
        p.run(np.zeros((1, 3, s + 1, s + 1), np.float32))


def test_predictions_top_k_and_batch_size_independence(exported):
    samples, images = _test_images(load_bundle(exported[0]))
    a = Predictor(exported[0], batch_size=1).predict_images(images, top_k=2)
    b = Predictor(exported[0], batch_size=32).predict_images(images, top_k=2)
    probs, _ = _torch_reference(load_bundle(exported[0]), samples)
    classes = load_bundle(exported[0]).classes
    for pa, pb, ref, s in zip(a, b, probs, samples, strict=True):
        assert isinstance(pa, Prediction) and len(pa.top) == 2
        assert pa.label == pb.label == classes[int(ref.argmax())] == classes[s.label]
        assert pa.source == s.source  # Pillow's filename
        assert pa.top[0].probability == pytest.approx(pb.top[0].probability, abs=1e-6)
        assert pa.top[0].probability >= pa.top[1].probability
    assert Predictor(exported[0]).predict_images(images[:1], top_k=99)[0].top.__len__() == len(classes)


def test_predict_paths_answers_good_files_and_reports_bad_ones(exported, tmp_path):
    samples, _ = _test_images(load_bundle(exported[0]), 3)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really")
    paths = [samples[0].source, str(bad), str(tmp_path / "missing.png"), samples[1].source,
             Path(samples[2].source)]
    preds = Predictor(exported[0], batch_size=2).predict_paths(paths)
    assert [p.source for p in preds] == [str(x) for x in paths]
    assert [p.error is None for p in preds] == [True, False, False, True, True]
    assert preds[2].error == "file not found" and preds[1].top == ()
    classes = load_bundle(exported[0]).classes
    assert [preds[i].label for i in (0, 3, 4)] == [classes[s.label] for s in samples]
    assert Predictor(exported[0]).predict_paths([]) == []


def test_int8_predictor_agrees_with_fp32(exported):
    _, images = _test_images(load_bundle(exported[0]))
    p8 = Predictor(exported[0], int8=True)
    assert p8.model_file == "model.int8.onnx"
    a = Predictor(exported[0]).probabilities(images)
    b = p8.probabilities(images)
    assert (a.argmax(1) == b.argmax(1)).all()


def test_missing_graph_and_tampered_files_are_refused(exported, trained_bundle, tmp_path):
    with pytest.raises(BundleError, match="no model.onnx; run `sightwise export .*`"):
        Predictor(trained_bundle)
    b = shutil.copytree(exported[0], tmp_path / "b")
    meta = json.loads((b / "bundle.json").read_text())
    meta["files"].pop("model.int8.onnx")
    (b / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="changed after it was written"):
        Predictor(b, int8=True)
    (b / "model.int8.onnx").unlink()
    write_bundle_meta(b, meta)  # a consistent bundle that simply has no int8 graph
    with pytest.raises(BundleError, match="no model.int8.onnx"):
        Predictor(b, int8=True)
    with open(b / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="model.onnx does not match its sha256"):
        Predictor(b)
    with pytest.raises(ValueError, match="batch_size"):
        Predictor(exported[0], batch_size=0)
