"""Traditional baselines checked against pipelines built directly from skimage/sklearn."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2gray
from skimage.feature import hog
from skimage.transform import resize
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from sightwise.baselines import traditional as tr

HOG_SIZE = 48  # 8x8 cells of 6 px: small enough to keep the suite fast
ANGLES = (0.0, 45.0, 90.0, 135.0)


def _stripes(rng: np.random.Generator, angle_deg: float, n: int, side: int = 48) -> np.ndarray:
    """n RGB uint8 images of sinusoidal stripes at angle_deg, random phase/period/tint."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
    theta = np.deg2rad(angle_deg)
    out = np.empty((n, side, side, 3), dtype=np.uint8)
    for i in range(n):
        period = rng.uniform(6.0, 10.0)
        proj = xx * np.cos(theta) + yy * np.sin(theta)
        wave = 0.5 + 0.4 * np.sin(2 * np.pi * proj / period + rng.uniform(0, 2 * np.pi))
        tint = rng.uniform(0.6, 1.0, size=3)
        img = wave[..., None] * tint + rng.normal(0, 0.08, (side, side, 3))
        out[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out


@pytest.fixture(scope="module")
def stripes():
    """Four orientation classes, 40 images each, split 20 train / 10 val / 10 test."""
    rng = np.random.default_rng(1234)
    imgs = [_stripes(rng, a, 40) for a in ANGLES]
    split = {"train": slice(0, 20), "val": slice(20, 30), "test": slice(30, 40)}
    return {
        name: (
            np.concatenate([im[s] for im in imgs]),
            np.repeat(np.arange(len(ANGLES)), s.stop - s.start),
        )
        for name, s in split.items()
    }


@pytest.fixture(scope="module")
def hog_svm(stripes):
    (xt, yt), (xv, yv) = stripes["train"], stripes["val"]
    return tr.fit_hog_svm(xt, yt, xv, yv, size=HOG_SIZE)


@pytest.fixture(scope="module")
def knn(stripes):
    (xt, yt), (xv, yv) = stripes["train"], stripes["val"]
    return tr.fit_knn_pixels(xt, yt, xv, yv, size=16, ks=(1, 3, 5, 7, 9, 15))


def _ref_grey_resized(images: np.ndarray, size: int) -> np.ndarray:
    """Independent reference: skimage's rgb2gray would use Rec. 709 weights, so weight
    by hand with the 601 weights Pillow uses, then skimage resize per image."""
    grey = images.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    return np.stack([resize(g, (size, size), anti_aliasing=True) for g in grey])


def _ref_hog(images: np.ndarray, size: int) -> np.ndarray:
    ppc = size // 8
    return np.stack(
        [
            hog(
                g,
                orientations=9,
                pixels_per_cell=(ppc, ppc),
                cells_per_block=(2, 2),
                block_norm="L2-Hys",
            )
            for g in _ref_grey_resized(images, size)
        ]
    )


def _acc(model, x, y) -> float:
    return float(np.mean(model.predict(x) == y))


def test_to_grey_matches_pillow_and_rgb2gray():
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)
    grey = tr.to_grey(colour)
    assert grey.dtype == np.float32 and grey.shape == (3, 20, 24)
    # Pillow's "L" is 601 luma rounded to uint8: within half a grey level.
    pil = np.stack([np.asarray(Image.fromarray(c).convert("L")) for c in colour]) / 255.0
    np.testing.assert_allclose(grey, pil, atol=0.6 / 255)
    # rgb2gray uses Rec. 709 weights; on low-saturation images (the photos baselines
    # see) the two agree to 1e-2. Saturated red differs by design (0.299 vs 0.2125):
    # the weight differences sum to 0, so +-8 levels of chroma move luma < 0.26 * 8 / 255.
    base = rng.integers(40, 216, (3, 20, 24, 1))
    natural = np.clip(base + rng.integers(-8, 9, (3, 20, 24, 3)), 0, 255).astype(np.uint8)
    np.testing.assert_allclose(tr.to_grey(natural), rgb2gray(natural), atol=1e-2)


def test_to_grey_rejects_a_single_image_and_ints():
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        tr.to_grey(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(TypeError):
        tr.to_grey(np.zeros((1, 8, 8, 3), np.int64))


def test_hog_features_match_skimage(stripes):
    x = stripes["val"][0][:5]
    np.testing.assert_allclose(tr.hog_features(x, HOG_SIZE), _ref_hog(x, HOG_SIZE), atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 8"):
        tr.hog_features(x, 50)


def test_hog_svm_is_accurate_and_matches_direct_pipeline(stripes, hog_svm):
    (xt, yt), xv, (xs, ys) = stripes["train"], stripes["val"][0], stripes["test"]
    assert hog_svm.name == "hog_svm"
    assert hog_svm.val_accuracy > 0.9
    assert np.mean(tr.predict_baseline(hog_svm, xs) == ys) > 0.9
    ref = make_pipeline(
        StandardScaler(), SVC(kernel="rbf", C=hog_svm.params["C"], gamma=hog_svm.params["gamma"])
    ).fit(_ref_hog(xt, HOG_SIZE), yt)
    for x in (xv, xs):
        np.testing.assert_array_equal(
            tr.predict_baseline(hog_svm, x), ref.predict(_ref_hog(x, HOG_SIZE))
        )


@pytest.mark.parametrize(
    ("Cs", "gammas"),
    [
        ((1, 10, 100), ("scale", 0.01, 0.001)),  # the defaults: all tie on this easy task
        # A grid with bad corners (gamma=10 makes the kernel ~identity, C=1e-3 underfits),
        # so the argmax is decided by accuracy, not by the tie-break.
        ((1e-3, 1.0), (10.0, "scale")),
    ],
)
def test_hog_svm_choice_is_argmax_of_validation_accuracy(stripes, hog_svm, Cs, gammas):
    (xt, yt), (xv, yv) = stripes["train"], stripes["val"]
    if Cs == (1, 10, 100):
        res = hog_svm
    else:
        res = tr.fit_hog_svm(xt, yt, xv, yv, size=HOG_SIZE, Cs=Cs, gammas=gammas)
    ft, fv = _ref_hog(xt, HOG_SIZE), _ref_hog(xv, HOG_SIZE)
    grid = [(C, g) for C in Cs for g in gammas]
    accs = [
        _acc(make_pipeline(StandardScaler(), SVC(C=C, gamma=g)).fit(ft, yt), fv, yv)
        for C, g in grid
    ]
    assert [r["val_accuracy"] for r in res.params["search"]] == pytest.approx(accs)
    best = grid[int(np.argmax(accs))]  # argmax keeps the first of ties, as documented
    assert (res.params["C"], res.params["gamma"]) == best
    assert res.val_accuracy == pytest.approx(max(accs))
    if Cs != (1, 10, 100):
        assert min(accs) < 0.5 < max(accs)


def test_knn_matches_direct_sklearn_and_picks_argmax_k(stripes, knn):
    (xt, yt), (xv, yv), xs = stripes["train"], stripes["val"], stripes["test"][0]
    ft, fv, fs = (_ref_grey_resized(x, 16).reshape(len(x), -1) for x in (xt, xv, xs))
    ks = (1, 3, 5, 7, 9, 15)
    accs = [_acc(KNeighborsClassifier(n_neighbors=k).fit(ft, yt), fv, yv) for k in ks]
    assert len(set(accs)) > 1, "fixture too easy: the k search would be untested"
    assert knn.name == "knn_pixels"
    assert knn.params["k"] == ks[int(np.argmax(accs))]
    assert knn.val_accuracy == pytest.approx(max(accs))
    ref = KNeighborsClassifier(n_neighbors=knn.params["k"]).fit(ft, yt)
    np.testing.assert_array_equal(tr.predict_baseline(knn, xv), ref.predict(fv))
    np.testing.assert_array_equal(tr.predict_baseline(knn, xs), ref.predict(fs))


def test_knn_skips_k_larger_than_train(stripes):
    (xt, yt), (xv, yv) = stripes["train"], stripes["val"]
    res = tr.fit_knn_pixels(xt[:4], yt[:4], xv, yv, size=8, ks=(1, 3, 9))
    assert [r["n_neighbors"] for r in res.params["search"]] == [1, 3]
    with pytest.raises(ValueError, match="grid is empty"):
        tr.fit_knn_pixels(xt[:4], yt[:4], xv, yv, size=8, ks=(9,))


def test_model_size_bytes(stripes, knn, hog_svm):
    n_train = len(stripes["train"][1])
    # k-NN stores its float32 training matrix and its integer labels.
    assert tr.model_size_bytes(knn) == n_train * 16 * 16 * 4 + n_train * np.dtype(np.intp).itemsize
    svc = hog_svm.model.named_steps["svc"]
    n_sv, d = svc.support_vectors_.shape
    n_pairs = len(svc.classes_) * (len(svc.classes_) - 1) // 2
    expected = 8 * (n_sv * d + (len(svc.classes_) - 1) * n_sv + n_pairs + 2 * d)
    assert d == 7 * 7 * 4 * 9 and tr.model_size_bytes(hog_svm) == expected


def test_linear_probe_on_separable_features():
    rng = np.random.default_rng(3)
    centres = rng.normal(0, 4, (3, 16))
    y = np.repeat(np.arange(3), 30)
    f = centres[y] + rng.normal(0, 1, (90, 16))
    tr_idx, va_idx = np.arange(90) % 3 != 0, np.arange(90) % 3 == 0
    res = tr.fit_linear_probe_features(
        f[tr_idx], y[tr_idx], f[va_idx], y[va_idx], class_weight="balanced"
    )
    assert res.name == "linear_probe" and res.val_accuracy == 1.0
    ref = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=res.params["C"], max_iter=2000, class_weight="balanced"),
    ).fit(f[tr_idx], y[tr_idx])
    np.testing.assert_array_equal(tr.predict_baseline(res, f), ref.predict(f))
    assert res.params["C"] == 0.01  # all tie at 1.0, so the first (strongest-regularised)
    assert tr.model_size_bytes(res) == 8 * (3 * 16 + 3 + 2 * 16)


def test_linear_probe_picks_argmax_c():
    rng = np.random.default_rng(5)
    f = rng.normal(0, 1, (120, 30))
    y = (f[:, 0] + 0.8 * rng.normal(0, 1, 120) > 0).astype(int)  # noisy: C matters
    ft, yt, fv, yv = f[:80], y[:80], f[80:], y[80:]
    Cs = (0.001, 0.01, 0.1, 1.0, 10.0)
    res = tr.fit_linear_probe_features(ft, yt, fv, yv, Cs=Cs)
    accs = [
        _acc(
            make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000)).fit(ft, yt),
            fv,
            yv,
        )
        for C in Cs
    ]
    assert res.params["C"] == Cs[int(np.argmax(accs))]
    assert res.val_accuracy == pytest.approx(max(accs))


def test_timing_and_result_fields(stripes, knn):
    xs = stripes["test"][0]
    ms = tr.time_inference_ms_per_image(knn, xs, repeats=2)
    assert np.isfinite(ms) and ms > 0
    assert knn.train_seconds > 0
    with pytest.raises(ValueError):
        tr.time_inference_ms_per_image(knn, xs[:0])


def test_labels_must_match_images(stripes):
    (xt, yt), (xv, yv) = stripes["train"], stripes["val"]
    with pytest.raises(ValueError, match="train"):
        tr.fit_knn_pixels(xt, yt[:-1], xv, yv)
