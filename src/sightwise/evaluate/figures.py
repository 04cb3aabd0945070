"""Report figures: confusion matrix, reliability diagram, training curves, mistakes, image
grids and image / heat-map pairs with a colour legend.

Every figure is drawn on its own ``matplotlib.figure.Figure`` with an explicit Agg
canvas, so nothing here touches pyplot's global state or needs a display; that keeps the
functions safe in worker threads and in the server. Each function writes a PNG
atomically (temp file + ``os.replace``, DESIGN.md principle 5) and returns its path.
Class names are wrapped onto several lines, never cut: two long names that share their
first 20 characters must stay tellable apart.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
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


def _wrap_line(line: str, width: int) -> list[str]:
    # Pieces end at a space, underscore, hyphen or slash (the break goes after it); a piece
    # longer than a line is cut. textwrap would not break after an underscore.
    pieces = [p for p in re.findall(r"[^ _/-]*[ _/-]?", line) if p]
    lines, cur = [], ""
    for piece in pieces:
        if cur and len(cur + piece.rstrip()) > width:
            lines.append(cur.rstrip())
            cur = ""
        while len(piece.rstrip()) > width:  # cur is empty here: the piece alone is too long
            lines.append(piece[:width])
            piece = piece[width:]
        cur += piece
    return [*lines, cur.rstrip()] if cur.strip() or not lines else lines


def wrap_label(text: str, width: int = 18, max_lines: int = 6) -> str:
    r"""`text` on lines of at most `width` characters, broken after a space, underscore,
    hyphen or slash where it can and inside a word where it must; past `max_lines` the last
    line ends in an ellipsis (a label is not a paragraph). Line breaks in `text` are kept.

    >>> wrap_label("Extremely_long_class_name", 10)
    'Extremely_\nlong_\nclass_name'
    >>> wrap_label("a b c d e f", 3, max_lines=2)
    'a b\nc …'
    """
    lines = [ln for part in str(text).split("\n") for ln in _wrap_line(part, width)]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(1, width - 2)].rstrip() + " …"
    return "\n".join(lines)


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
    # A label gets as many lines as fit beside its row (and, turned upright, under its
    # column), and lines long enough for the longest name to fit in them (up to 40
    # characters a line; only a name longer than that many lines is shortened).
    fontsize = 9 if n <= 12 else 7
    lines = max(1, int(0.85 * (side - 1.5) / n / (1.25 * fontsize / 72)))
    longest = max(len(c) for c in class_names)
    width = min(40, max(18, math.ceil(longest / lines) + 3))
    labels = [wrap_label(c, width, max_lines=lines) for c in class_names]
    label_in = 0.075 * max(len(line) for label in labels for line in label.split("\n"))
    fig = new_figure(side + 1.0 + label_in, side + label_in)
    ax = fig.add_subplot()
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=vmax)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04,
                 label="fraction of true class" if normalize else "count")
    # Upright, not slanted: slanted multi-line labels run into their neighbours.
    ax.set_xticks(range(n), labels, rotation=90, ha="right", va="center",
                  rotation_mode="anchor", fontsize=fontsize)
    ax.set_yticks(range(n), labels, fontsize=fontsize)
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
    titles = [wrap_label(t, 34) for t in titles]
    lines = max(t.count("\n") + 1 for t in titles)
    fig = new_figure(2.8 * ncols, (2.7 + 0.14 * lines) * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, image, title in zip(axes, images, titles, strict=False):
        img, cmap = _as_displayable(image)
        ax.imshow(img, cmap=cmap)
        ax.set_title(title, fontsize=8)
    return save_figure(fig, path)


def plot_mistakes_grid(
    images: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    confidence: np.ndarray,
    class_names: list[str],
    path: str | Path,
    max_items: int = 16,
) -> Path | None:
    """The most confident mistakes, highest confidence first, titled with the true and the
    predicted class and the confidence; None, and no file, when there is no mistake (the
    report says so in words).

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
        return None
    order = wrong[np.argsort(-confidence[wrong], kind="stable")][:max_items]
    titles = [f"true: {class_names[y_true[i]]}\npredicted: {class_names[y_pred[i]]} "
              f"(p={confidence[i]:.2f})" for i in order]
    return plot_images_grid([images[i] for i in order], titles, path, ncols=4)


def plot_training_curves(history: Sequence[dict], path: str | Path,
                         title: str = "Fine-tuning") -> Path:
    """Per epoch: training and validation loss (left), validation accuracy (right); one
    colour per ensemble member (``member`` key, 1 when absent), the best epoch marked."""
    if not history:
        raise ValueError("plot_training_curves needs at least one epoch")
    members = sorted({int(h.get("member", 1)) for h in history})
    fig = new_figure(10.0, 3.8)
    loss_ax, acc_ax = fig.subplots(1, 2)
    for k, member in enumerate(members):
        rows = sorted((h for h in history if int(h.get("member", 1)) == member),
                      key=lambda h: h["epoch"])
        epochs = [h["epoch"] for h in rows]
        colour = f"C{k % 10}"
        name = f"member {member}" if len(members) > 1 else ""
        loss_ax.plot(epochs, [h["train_loss"] for h in rows], "-o", ms=3, color=colour,
                     label=f"{name} train".strip())
        loss_ax.plot(epochs, [h.get("val_loss", np.nan) for h in rows], "--o", ms=3,
                     color=colour, mfc="white", label=f"{name} validation".strip())
        acc = [h["val_accuracy"] for h in rows]
        acc_ax.plot(epochs, acc, "-o", ms=3, color=colour, label=name or "validation")
        best = int(np.argmax(acc))  # the first best epoch, as the trainer keeps it
        acc_ax.plot(epochs[best], acc[best], "*", ms=12, color=colour)
    loss_ax.set(xlabel="Epoch", ylabel="Cross-entropy loss", title="Loss")
    acc_ax.set(xlabel="Epoch", ylabel="Accuracy", title="Validation accuracy (★ best)",
               ylim=(-0.02, 1.06))
    for ax in (loss_ax, acc_ax):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncols=2 if len(members) > 2 else 1)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_heatmap_pairs(
    originals: Sequence[np.ndarray],
    overlays: Sequence[np.ndarray],
    titles: Sequence[str],
    path: str | Path,
    *,
    legend_colors: np.ndarray,
    legend_label: str = "evidence for the predicted class (class activation, scaled per image)",
    marked: Sequence[bool] | None = None,
    pairs_per_row: int = 2,
) -> Path:
    """Each image beside its heat-map overlay, one title over the pair (in red where
    ``marked``, e.g. a mistake), and a colour bar that says what the colours mean.
    ``legend_colors`` (256, 3) uint8 are the heat map's colours from its lowest to its
    highest value, read from the function that drew the overlays.
    """
    if not len(originals) == len(overlays) == len(titles):
        raise ValueError("originals, overlays and titles must have equal length")
    if len(originals) == 0:
        raise ValueError("plot_heatmap_pairs needs at least one pair")
    marked = list(marked) if marked is not None else [False] * len(titles)
    per_row = max(1, min(pairs_per_row, len(originals)))
    nrows = math.ceil(len(originals) / per_row)
    titles = [wrap_label(t, 44) for t in titles]
    lines = max(t.count("\n") + 1 for t in titles)
    # Every title as tall as the tallest, blank lines on top: the images of a row line up.
    titles = [" \n" * (lines - 1 - t.count("\n")) + t for t in titles]
    row_h = 2.45 + 0.16 * lines
    # Constrained layout (not tight): it understands nested subfigures.
    fig = Figure(figsize=(5.0 * per_row, row_h * nrows + 0.9), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    rows = fig.subfigures(nrows + 1, 1, height_ratios=[row_h] * nrows + [0.9])
    for i, (orig, over, title) in enumerate(zip(originals, overlays, titles, strict=True)):
        pair = rows[i // per_row].subfigures(1, per_row, squeeze=False)[0][i % per_row]
        axes = pair.subplots(1, 2)
        for ax, img, name in zip(axes, (orig, over), ("image", "heat map"), strict=True):
            shown, cmap = _as_displayable(img)
            ax.imshow(shown, cmap=cmap)
            ax.set_axis_off()
            ax.set_title(name, fontsize=7, color="#57606a")
        pair.suptitle(title, fontsize=8.5, color="#cf222e" if marked[i] else "black")
    bar = rows[-1].add_gridspec(1, 3, width_ratios=[1, 2, 1])
    cax = rows[-1].add_subplot(bar[0, 1])
    cmap = ListedColormap(np.asarray(legend_colors, np.float64) / 255.0)
    cb = rows[-1].colorbar(ScalarMappable(Normalize(0.0, 1.0), cmap), cax=cax,
                           orientation="horizontal")
    cb.set_ticks([0.0, 0.5, 1.0], labels=["weakest", "half-way", "strongest"])
    cb.set_label(legend_label, fontsize=8)
    cb.ax.tick_params(labelsize=7)
    return save_figure(fig, path)
