"""Report figures: confusion matrix, reliability diagram, mistakes and image grids.

Every figure is drawn on its own ``matplotlib.figure.Figure`` with an explicit Agg
canvas, so nothing here touches pyplot's global state or needs a display; that keeps the
functions safe in worker threads and in the server. Each function writes a PNG
atomically (temp file + ``os.replace``, DESIGN.md principle 5) and returns its path.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sightwise.evaluate.calibration import expected_calibration_error, reliability_bins

DPI = 110
# Beyond this many classes cell annotations overlap and become noise.
_MAX_ANNOTATED_CLASSES = 25


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="tight")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG next to ``path`` under a temp name, then rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=DPI)
        # mkstemp creates 0600; a report or figure is meant to be read by others.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def plot_confusion_matrix(
    cm: np.ndarray | list,
    class_names: list[str],
    path: str | Path,
    normalize: bool = True,
    title: str = "Confusion matrix (test)",
) -> Path:
    """Heat-map of a confusion matrix (rows = true, columns = predicted).

    With ``normalize`` the colour is the row fraction (recall per class) so rare classes
    stay visible; the cells are always annotated with the raw counts.
    """
    cm = np.asarray(cm, dtype=np.int64)
    n = len(class_names)
    if cm.shape != (n, n):
        raise ValueError(f"cm must be ({n}, {n}) for {n} class names, got {cm.shape}")
    rows = cm.sum(axis=1, keepdims=True)
    shown = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0) if normalize else cm
    vmax = 1.0 if normalize else max(int(cm.max()), 1)
    side = min(max(4.5, 0.55 * n + 2.5), 22.0)
    fig = new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=vmax)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04,
                 label="fraction of true class" if normalize else "count")
    labels = [_short(c) for c in class_names]
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=9)
    ax.set_yticks(range(n), labels, fontsize=9)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(f"{title}, n = {int(cm.sum())}")
    if n <= _MAX_ANNOTATED_CLASSES:
        fontsize = 9 if n <= 10 else 7
        for i in range(n):
            for j in range(n):
                text = f"{cm[i, j]}" + (f"\n{shown[i, j]:.0%}" if normalize else "")
                color = "white" if shown[i, j] > 0.55 * vmax else "black"
                ax.text(j, i, text, ha="center", va="center", color=color, fontsize=fontsize)
    return save_figure(fig, path)


def _reliability_panel(ax, probs: np.ndarray, y: np.ndarray, n_bins: int, label: str) -> None:
    b = reliability_bins(probs, y, n_bins)
    ece = expected_calibration_error(probs, y, n_bins)
    filled = b["count"] > 0
    centres = (b["bin_lower"] + b["bin_upper"]) / 2
    width = 1.0 / n_bins
    ax.bar(centres[filled], b["accuracy"][filled], width=width, color="#3b75af",
           edgecolor="black", linewidth=0.6, label="accuracy")
    # The gap bar (Guo et al. 2017, fig. 1) shows how far each bin is from calibrated.
    gap = b["confidence"][filled] - b["accuracy"][filled]
    # Hatch only, no fill: an under-confident bin's gap lies over the blue bar and must
    # stay readable there too.
    ax.bar(centres[filled], gap, bottom=b["accuracy"][filled], width=width,
           facecolor="none", edgecolor="#d62728", linewidth=0.8, hatch="///",
           label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("Confidence")
    ax.set_ylabel("Accuracy")
    ax.set_title(f"{label}: ECE = {ece:.3f}")
    ax.legend(loc="upper left", fontsize=8)


def plot_reliability_diagram(
    probs_before: np.ndarray,
    probs_after: np.ndarray,
    y: np.ndarray,
    path: str | Path,
    n_bins: int = 15,
) -> Path:
    """Side-by-side reliability diagrams before and after temperature scaling."""
    fig = new_figure(10.0, 5.0)
    axes = fig.subplots(1, 2)
    _reliability_panel(axes[0], probs_before, y, n_bins, "Before calibration")
    _reliability_panel(axes[1], probs_after, y, n_bins, "After calibration")
    fig.suptitle(f"Reliability diagram (n = {len(np.asarray(y))}, {n_bins} bins)")
    return save_figure(fig, path)


def _as_displayable(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Squeeze single-channel images and clip floats to [0, 1] for ``imshow``."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim not in (2, 3):
        raise ValueError(f"each image must be (H, W) or (H, W, C), got shape {img.shape}")
    if np.issubdtype(img.dtype, np.floating):
        img = np.clip(img, 0.0, 1.0)
    return img, ("gray" if img.ndim == 2 else None)


def plot_images_grid(
    images: Sequence[np.ndarray] | np.ndarray,
    titles: Sequence[str],
    path: str | Path,
    ncols: int = 4,
) -> Path:
    """Tile images (uint8, or float in [0, 1]) with one title each."""
    if len(images) != len(titles):
        raise ValueError(f"got {len(images)} images but {len(titles)} titles")
    if len(images) == 0:
        raise ValueError("plot_images_grid needs at least one image")
    ncols = max(1, min(ncols, len(images)))
    nrows = math.ceil(len(images) / ncols)
    fig = new_figure(2.8 * ncols, 3.0 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, image, title in zip(axes, images, titles, strict=False):
        img, cmap = _as_displayable(image)
        ax.imshow(img, cmap=cmap)
        ax.set_title(title, fontsize=8, wrap=True)
    return save_figure(fig, path)


def _no_mistakes(path: str | Path) -> Path:
    fig = new_figure(5.0, 2.0)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.5, "No mistakes on the test split", ha="center", va="center", fontsize=13)
    return save_figure(fig, path)


def plot_mistakes_grid(
    images: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    confidence: np.ndarray,
    class_names: list[str],
    path: str | Path,
    max_items: int = 16,
) -> Path:
    """The most confident mistakes, highest confidence first, titled "true → pred (p=..)".

    Confident mistakes are where label noise and real failure modes show up first.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    confidence = np.asarray(confidence, dtype=np.float64)
    if not len(images) == len(y_true) == len(y_pred) == len(confidence):
        raise ValueError("images, y_true, y_pred and confidence must have equal length")
    if max_items < 1:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    wrong = np.flatnonzero(y_true != y_pred)
    if wrong.size == 0:
        return _no_mistakes(path)
    order = wrong[np.argsort(-confidence[wrong], kind="stable")][:max_items]
    titles = [
        f"{_short(class_names[y_true[i]], 14)} → {_short(class_names[y_pred[i]], 14)}"
        f" (p={confidence[i]:.2f})"
        for i in order
    ]
    return plot_images_grid([images[i] for i in order], titles, path, ncols=4)
