"""reference.npz: its statistics against scikit-learn, its outlier rate on fresh data, and
the round trip through a real exported bundle."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from sklearn.covariance import ledoit_wolf as sk_ledoit_wolf
from sklearn.decomposition import PCA

from sightwise.bundle import load_bundle
from sightwise.errors import BundleError
from sightwise.monitor.reference import (
    REFERENCE,
    atc_threshold,
    build_reference,
    fit_reference,
    ledoit_wolf,
    load_reference,
    neg_entropy,
    pca,
    read_reference,
    reference_bytes,
    run_outputs,
)


def test_pca_matches_scikit_learn_up_to_sign():
    x = np.random.default_rng(0).normal(size=(80, 20)) * np.linspace(4, 0.5, 20)
    mean, axes, var = pca(x, 5)
    sk = PCA(5).fit(x)
    assert np.allclose(mean, sk.mean_, atol=1e-5)
    assert np.allclose(var, sk.explained_variance_, rtol=1e-5)
    assert np.allclose(np.abs(np.sum(axes * sk.components_, 1)), 1, atol=1e-5)


def test_ledoit_wolf_matches_scikit_learn():
    x = np.random.default_rng(1).normal(size=(40, 16)) @ np.diag(np.linspace(3, 0.2, 16))
    cov, shrink = ledoit_wolf(x)
    assert shrink == pytest.approx(sk_ledoit_wolf(x)[1])
    assert np.allclose(cov, sk_ledoit_wolf(x)[0], rtol=1e-8, atol=1e-10)


def test_outlier_threshold_flags_about_its_share_of_fresh_clean_data(synth):
    """The out-of-fold threshold (PCA and Gaussian refitted without each fold) gives new
    clean images about the stated 5 % outlier rate the binomial test assumes."""
    ref = synth.reference(300)
    probs, emb, _ = synth.outputs(4000, np.random.default_rng(9))
    keys = [f"{k:016x}" for k in np.random.default_rng(8).integers(0, 2**62, len(emb))]
    rate = np.mean(ref.outlier_scores(emb, keys) > ref.stats["outlier_threshold"])
    assert abs(rate - ref.stats["outlier_rate"]) < 0.02, rate


def test_atc_threshold_reproduces_the_reference_accuracy():
    rng = np.random.default_rng(2)
    probs = rng.dirichlet([1, 1, 1, 1], 500)
    labels = np.where(rng.random(500) < 0.7, probs.argmax(1), rng.integers(0, 4, 500))
    t = atc_threshold(probs, labels)
    acc = np.mean(probs.argmax(1) == labels)
    assert np.mean(neg_entropy(probs) >= t) == pytest.approx(acc, abs=1 / 500)
    assert atc_threshold(probs[:3], np.array([9, 9, 9])) == float("inf")  # nothing right


def test_reference_file_round_trip_and_no_pickles(synth, tmp_path):
    ref = synth.reference(60)
    path = tmp_path / REFERENCE
    path.write_bytes(reference_bytes(ref))
    back = read_reference(path)
    for name in ("probs", "embeddings", "proj", "pca_components", "fold_precision"):
        assert np.array_equal(getattr(back, name), getattr(ref, name))
    assert back.stats == ref.stats
    with np.load(path, allow_pickle=False) as z:  # loads with pickles refused
        assert z["proj"].dtype == np.float32


def test_fit_reference_refuses_too_few_images(synth):
    probs, emb, labels = synth.outputs(5, np.random.default_rng(0))
    with pytest.raises(Exception, match="at least 10"):
        fit_reference(probs, emb, labels)


def test_build_reference_on_an_exported_bundle(ref_bundle):
    """Written into the bundle, listed with its sha256, and the same numbers the runtime's
    Predictor gives for the validation images."""
    from sightwise.export.manifest import bundle_samples, load_images
    from sightwise.runtime import Predictor

    bundle = load_bundle(ref_bundle)  # verifies every listed file, reference.npz included
    assert REFERENCE in bundle.meta.files
    assert bundle.meta.section("monitor")["split"] == "val"
    ref = load_reference(bundle)
    assert ref.meta["id"] == bundle.meta.files[REFERENCE].sha256[:16]
    images, labels = load_images(bundle_samples(bundle, "val"), bundle.preprocessing,
                                 lambda _m: None, what="val")
    probs, emb = run_outputs(Predictor(bundle, threads=1), images)
    assert np.allclose(ref.probs, probs, atol=1e-6)
    assert np.array_equal(ref.labels, labels)
    assert np.allclose(ref.proj, ref.project(emb), atol=1e-4)
    assert ref.stats["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == labels))


def test_a_tampered_reference_is_refused(ref_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(ref_bundle, copy)
    (copy / REFERENCE).write_bytes(b"not an npz")
    with pytest.raises(BundleError, match="sha256"):
        load_reference(copy)


def test_build_reference_needs_an_exported_graph(trained_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(trained_bundle, copy)
    with pytest.raises(BundleError, match="model.onnx"):
        build_reference(copy, log=lambda _m: None)
