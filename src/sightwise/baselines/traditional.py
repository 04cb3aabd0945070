"""Traditional image-recognition baselines: k-NN on pixels, HOG + RBF-SVM, linear probe.

These exist so the deep model is judged against what a careful engineer would try
first (DESIGN.md, "Honest numbers"). Every baseline:

* takes the same train/validation split the CNN gets, chooses its hyperparameters by
  validation accuracy (ties go to the earlier candidate in the grid), and keeps the model
  fitted on the training split only -- never train+val -- so it sees exactly the data
  the CNN saw;
* returns a fitted scikit-learn ``Pipeline`` whose first step does the preprocessing
  (greyscale, resize, HOG), so ``result.model.predict(images)`` takes the same uint8
  ``(N, H, W, 3)`` arrays as the CNN and inference timing includes preprocessing.

Example, on features that a linear model separates:

>>> rng = np.random.default_rng(0)
>>> f = np.concatenate([rng.normal(-3, 1, (20, 4)), rng.normal(3, 1, (20, 4))])
>>> y = np.repeat([0, 1], 20)
>>> res = fit_linear_probe_features(f[::2], y[::2], f[1::2], y[1::2])
>>> res.name, res.val_accuracy
('linear_probe', 1.0)
>>> predict_baseline(res, np.array([[-3.0] * 4, [3.0] * 4])).tolist()
[0, 1]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from skimage.feature import hog
from skimage.transform import resize
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import SVC

# ITU-R BT.601 luma weights, the same ones Pillow's convert("L") uses, so a greyscale
# baseline sees what a user sees when they open the image as greyscale.
_LUMA_601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# HOG as in Dalal & Triggs (2005): 9 unsigned orientations, 2x2-cell blocks, L2-Hys.
# The cell size scales with the image so there are always 8x8 cells (16 px at 128 px).
_HOG_CELLS = 8
_HOG_KW = {"orientations": 9, "cells_per_block": (2, 2), "block_norm": "L2-Hys"}


@dataclass
class BaselineResult:
    """A fitted baseline and how it was chosen.

    ``model`` is a fitted scikit-learn ``Pipeline`` taking raw images (k-NN, HOG+SVM)
    or feature rows (linear probe). ``train_seconds`` is the wall time of the whole fit
    call: feature extraction, the validation search and the fit of the kept model.
    """

    name: str
    model: object
    params: dict
    train_seconds: float
    val_accuracy: float


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images of shape (N, H, W, 3), got {images.shape}")
    return images


def _check_labels(x: np.ndarray, y: np.ndarray, split: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{split}: expected {len(x)} labels in a 1-D array, got {y.shape}")
    if len(y) == 0:
        raise ValueError(f"{split}: the split is empty")
    return y


def to_grey(images: np.ndarray) -> np.ndarray:
    """Return ITU-R 601 luma of ``(N, H, W, 3)`` images as float32 ``(N, H, W)`` in [0, 1].

    uint8 input is divided by 255; floating input is taken to be in [0, 1] already.

    >>> px = np.array([[[[255, 255, 255], [255, 0, 0]]]], dtype=np.uint8)
    >>> to_grey(px).astype(float).round(3).tolist()
    [[[1.0, 0.299]]]
    """
    images = _check_images(images)
    if images.dtype == np.uint8:
        rgb = images.astype(np.float32) / np.float32(255)
    elif np.issubdtype(images.dtype, np.floating):
        rgb = images.astype(np.float32, copy=False)
    else:
        raise TypeError(f"expected uint8 or floating images, got {images.dtype}")
    return np.clip(rgb @ _LUMA_601, 0.0, 1.0)


def _grey_resized(images: np.ndarray, size: int) -> np.ndarray:
    """Greyscale then resize each image to ``size`` x ``size``; float32 (N, size, size)."""
    grey = to_grey(images)
    out = np.empty((len(grey), size, size), dtype=np.float32)
    for i, img in enumerate(grey):
        # anti_aliasing blurs before downsampling so stripes finer than the new pixel
        # grid average out instead of aliasing into spurious low-frequency patterns.
        out[i] = resize(img, (size, size), anti_aliasing=True)
    return out


def grey_pixels(images: np.ndarray, size: int = 32) -> np.ndarray:
    """Flattened greyscale pixels in [0, 1]: float32 ``(N, size * size)`` (the k-NN input)."""
    return _grey_resized(images, size).reshape(len(images), -1)


def hog_features(images: np.ndarray, size: int = 128) -> np.ndarray:
    """HOG descriptors of greyscale images resized to ``size``: float64 ``(N, D)``.

    With 8x8 cells and 2x2-cell blocks, ``D = 7 * 7 * 4 * 9 = 1764`` for any ``size``.

    >>> hog_features(np.zeros((2, 40, 40, 3), np.uint8), size=64).shape
    (2, 1764)
    """
    ppc = size // _HOG_CELLS
    if ppc < 1 or size % _HOG_CELLS:
        raise ValueError(f"size must be a positive multiple of {_HOG_CELLS}, got {size}")
    grey = _grey_resized(images, size)
    # A plain loop: skimage's hog is per image and ~2 ms at 128 px, so 2000 images take
    # a few seconds; parallelising would fight the CNN's workers for the same cores.
    return np.stack(
        [hog(img, pixels_per_cell=(ppc, ppc), channel_axis=None, **_HOG_KW) for img in grey]
    )


def _accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(model.predict(x) == y))


def _search(
    candidates: Iterable[dict], make: Callable[..., object], data: tuple
) -> tuple[object, dict, float, list[dict]]:
    """Fit ``make(**params)`` on train for each candidate; keep the best on validation.

    ``data`` is ``(x_train, y_train, x_val, y_val)`` already preprocessed. Ties keep the
    earlier candidate, so the order of the grid is the tie-break (simpler model first).
    """
    x_train, y_train, x_val, y_val = data
    best, best_params, best_acc, log = None, {}, -1.0, []
    for params in candidates:
        model = make(**params).fit(x_train, y_train)
        acc = _accuracy(model, x_val, y_val)
        log.append({**params, "val_accuracy": acc})
        if acc > best_acc:
            best, best_params, best_acc = model, params, acc
    if best is None:
        raise ValueError("the hyperparameter grid is empty")
    return best, best_params, best_acc, log


def _prefitted_pipeline(featurize: FunctionTransformer, *steps) -> Pipeline:
    """Chain a stateless featurizer with estimators that are already fitted.

    The search already computed the features once; fitting a Pipeline would compute
    them again. FunctionTransformer learns nothing, so fitting it on no data is
    enough to mark it fitted.
    """
    featurize.fit(None)
    return Pipeline([("features", featurize), *steps])


def fit_knn_pixels(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    size: int = 32,
    ks: Sequence[int] = (1, 3, 5, 7, 9),
    seed: int = 0,
) -> BaselineResult:
    """k-nearest neighbours on flattened ``size`` x ``size`` greyscale pixels.

    ``k`` is chosen by validation accuracy among the ``ks`` no larger than the training
    set. ``seed`` is unused (k-NN is deterministic) and kept for a uniform signature.
    """
    del seed
    start = time.perf_counter()
    y_train = _check_labels(x_train, y_train, "train")
    y_val = _check_labels(x_val, y_val, "val")
    data = (grey_pixels(x_train, size), y_train, grey_pixels(x_val, size), y_val)
    # Brute force: the stored model is exactly the training matrix (what
    # model_size_bytes counts), and trees do not help at 1024 dimensions anyway.
    grid = [{"n_neighbors": int(k)} for k in ks if 1 <= k <= len(y_train)]
    # Every candidate is fitted on train only and the winner is kept as is: refitting
    # on train+val would give k-NN more data than the CNN saw and flatter the baseline.
    knn, best, acc, log = _search(
        grid, lambda **p: KNeighborsClassifier(algorithm="brute", **p), data
    )
    featurize = FunctionTransformer(grey_pixels, kw_args={"size": size})
    model = _prefitted_pipeline(featurize, ("knn", knn))
    params = {"k": best["n_neighbors"], "size": size, "search": log}
    return BaselineResult("knn_pixels", model, params, time.perf_counter() - start, acc)


def fit_hog_svm(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    size: int = 128,
    Cs: Sequence[float] = (1, 10, 100),
    gammas: Sequence[float | str] = ("scale", 0.01, 0.001),
    seed: int = 0,
) -> BaselineResult:
    """HOG descriptors + standardisation + RBF SVM; ``C`` and ``gamma`` by validation."""
    start = time.perf_counter()
    y_train = _check_labels(x_train, y_train, "train")
    y_val = _check_labels(x_val, y_val, "val")
    # The scaler does not depend on C or gamma, so it is fitted once on train only.
    h_train = hog_features(x_train, size)
    scaler = StandardScaler().fit(h_train)
    h_val = scaler.transform(hog_features(x_val, size))
    data = (scaler.transform(h_train), y_train, h_val, y_val)
    grid = [{"C": C, "gamma": g} for C in Cs for g in gammas]
    # Kept model is fitted on train only, as for k-NN (see fit_knn_pixels).
    # probability stays at its default (False): sklearn 1.9 deprecates passing it, and
    # labels alone are what the comparison needs (the CNN's calibration is its own).
    svc, best, acc, log = _search(grid, lambda **p: SVC(kernel="rbf", random_state=seed, **p), data)
    featurize = FunctionTransformer(hog_features, kw_args={"size": size})
    model = _prefitted_pipeline(featurize, ("scaler", scaler), ("svc", svc))
    params = {
        "C": best["C"],
        "gamma": best["gamma"],
        "size": size,
        "pixels_per_cell": size // _HOG_CELLS,
        "search": log,
    }
    return BaselineResult("hog_svm", model, params, time.perf_counter() - start, acc)


def fit_linear_probe_features(
    f_train: np.ndarray,
    y_train: np.ndarray,
    f_val: np.ndarray,
    y_val: np.ndarray,
    *,
    Cs: Sequence[float] = (0.01, 0.1, 1.0, 10.0),
    class_weight: dict | str | None = None,
) -> BaselineResult:
    """Logistic regression on precomputed deep features ``(N, D)``; ``C`` by validation.

    The model takes feature rows, not images: the caller runs the frozen backbone.
    """
    start = time.perf_counter()
    f_train, f_val = np.asarray(f_train), np.asarray(f_val)
    if f_train.ndim != 2 or f_val.ndim != 2:
        raise ValueError(f"expected (N, D) features, got {f_train.shape} and {f_val.shape}")
    y_train = _check_labels(f_train, y_train, "train")
    y_val = _check_labels(f_val, y_val, "val")
    scaler = StandardScaler().fit(f_train)
    data = (scaler.transform(f_train), y_train, scaler.transform(f_val), y_val)
    grid = [{"C": float(C)} for C in Cs]
    lr, best, acc, log = _search(
        grid, lambda **p: LogisticRegression(max_iter=2000, class_weight=class_weight, **p), data
    )
    model = Pipeline([("scaler", scaler), ("lr", lr)])
    params = {"C": best["C"], "class_weight": class_weight, "search": log}
    return BaselineResult("linear_probe", model, params, time.perf_counter() - start, acc)


def predict_baseline(result: BaselineResult, images_or_features: np.ndarray) -> np.ndarray:
    """Predicted labels: images for k-NN / HOG+SVM, feature rows for the linear probe."""
    return np.asarray(result.model.predict(images_or_features))


# The arrays each estimator needs at prediction time, i.e. what storing it must keep.
_STORED_ARRAYS = {
    StandardScaler: ("mean_", "scale_"),
    KNeighborsClassifier: ("_fit_X", "_y"),
    SVC: ("support_vectors_", "dual_coef_", "intercept_"),
    LogisticRegression: ("coef_", "intercept_"),
}


def model_size_bytes(result: BaselineResult) -> int:
    """Bytes of the arrays the fitted model needs to predict, summed from ``nbytes``.

    k-NN: the training matrix and its labels; SVM: support vectors, dual coefficients,
    intercepts and the scaler's mean/scale; linear probe: coefficients, intercepts and
    the scaler. Pickle overhead and the few class labels are not counted.
    """
    steps = result.model.steps if isinstance(result.model, Pipeline) else [("", result.model)]
    total = 0
    for _, est in steps:
        if isinstance(est, FunctionTransformer):
            continue  # stateless preprocessing: nothing stored
        attrs = _STORED_ARRAYS.get(type(est))
        if attrs is None:
            raise TypeError(f"don't know what a fitted {type(est).__name__} stores")
        total += sum(np.asarray(getattr(est, a)).nbytes for a in attrs)
    return int(total)


def time_inference_ms_per_image(
    result: BaselineResult, images_or_features: np.ndarray, repeats: int = 1
) -> float:
    """Best-of-``repeats`` wall time of ``predict_baseline``, in ms per input row.

    Includes the preprocessing (greyscale, resize, HOG), as the CNN's latency includes
    its own. The minimum is reported because slower runs measure other load, not us.
    """
    n = len(images_or_features)
    if n == 0 or repeats < 1:
        raise ValueError("need at least one input and repeats >= 1")
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        predict_baseline(result, images_or_features)
        best = min(best, time.perf_counter() - start)
    return best * 1000.0 / n
