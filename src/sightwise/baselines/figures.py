"""Benchmark figures (accuracy against training time, the learning curve) and the table.

Drawn like `evaluate.figures` (own Figure + Agg canvas, atomic PNG write), whose two
helpers are reused so every figure of a run looks and is written the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sightwise.evaluate.figures import new_figure, save_figure


def _yerr(means, cis) -> np.ndarray:
    """(2, n) distances from each mean down and up to its interval's bounds."""
    means = np.asarray(means, np.float64)
    cis = np.asarray(cis, np.float64).reshape(-1, 2)
    return np.clip(np.stack([means - cis[:, 0], cis[:, 1] - means]), 0, None)


def dataset_label(path: str) -> str:
    """The last two path parts ("neu_det/images"): a bare "images" names nothing."""
    return "/".join(Path(path).parts[-2:])


def _label_offsets(ax, x: np.ndarray, y: np.ndarray, min_gap_px: float = 13.0) -> list[float]:
    """Vertical offsets (points) that keep right-hand labels of nearby points apart.

    Labels sit to the right of their point; going from the top point down, a label closer
    than ``min_gap_px`` to the one above it (and horizontally near) is pushed down.
    """
    fig = ax.get_figure()
    fig.canvas.draw()  # fixes the transform for the limits set so far
    px = ax.transData.transform(np.column_stack([x, y]))
    placed: list[tuple[float, float]] = []
    offsets = [0.0] * len(x)
    for i in np.argsort(-px[:, 1]):
        label_y = px[i, 1]
        for other_x, other_y in placed:
            if abs(other_x - px[i, 0]) < 90 and other_y - label_y < min_gap_px:
                label_y = other_y - min_gap_px
        placed.append((px[i, 0], label_y))
        offsets[i] = (label_y - px[i, 1]) * 72.0 / fig.dpi
    return offsets


def plot_benchmark(result: dict, path: str | Path) -> Path:
    """Accuracy (95 % CI bars) against training time per fold, log x, one labelled point
    per method."""
    methods = result["methods"]
    x = np.array([max(m["train_seconds"], 1e-3) for m in methods])
    y = np.array([m["accuracy_mean"] for m in methods])
    lows = np.array([m["accuracy_ci"][0] for m in methods])
    fig = new_figure(6.4, 4.4)
    ax = fig.add_subplot()
    yerr = _yerr(y, [m["accuracy_ci"] for m in methods])
    for i in range(len(methods)):
        ax.errorbar(x[i], y[i], yerr=yerr[:, i:i + 1], fmt="o", capsize=4, color=f"C{i}")
    ax.set_xscale("log")
    # Room on the right for the labels on a log axis.
    ax.set_xlim(x.min() / 2, x.max() * 5)
    ax.set_ylim(max(0.0, min(lows.min(), y.min()) - 0.05), 1.03)
    for i, dy in enumerate(_label_offsets(ax, x, y)):
        ax.annotate(methods[i]["name"], (x[i], y[i]), textcoords="offset points",
                    xytext=(7, dy), va="center", fontsize=9, color=f"C{i}")
    ax.set_xlabel("training time per fold (s, log scale)")
    ax.set_ylabel("test accuracy (95 % CI)")
    ax.set_title(f"{dataset_label(result['dataset'])}: {result['n_images']} images, "
                 f"{result['folds']} fold(s), split {result['split']}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    return save_figure(fig, path)


def plot_learning_curve(curve: dict, path: str | Path) -> Path:
    """Test accuracy against labelled images per class (log x), one line per method."""
    fig = new_figure(6.4, 4.4)
    ax = fig.add_subplot()
    points = curve["points"]
    x = np.array([p["labels_per_class"] for p in points])
    for name in curve["methods"]:
        y = np.array([p["methods"][name]["accuracy"] for p in points])
        ci = [p["methods"][name]["accuracy_ci"] for p in points]
        ax.errorbar(x, y, yerr=_yerr(y, ci), fmt="o-", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels([str(p["n_per_class"]) if p["n_per_class"] != "all"
                        else f"all\n({p['labels_per_class']:.0f})" for p in points])
    ax.minorticks_off()
    ax.set_xlabel("labelled images per class (log scale)")
    ax.set_ylabel("test accuracy (95 % bootstrap CI)")
    ax.set_title(f"{dataset_label(curve['dataset'])}: learning curve, {curve['n_test']} test images",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def _fmt_seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def _fmt_bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def markdown_table(result: dict) -> str:
    """The slide-ready table; ± is the larger distance from the mean to a 95 % bound."""
    lines = ["| method | accuracy (95 % CI) | macro-F1 | train time | ms / image | size |",
             "| --- | --- | --- | --- | --- | --- |"]
    for m in result["methods"]:
        lo, hi = m["accuracy_ci"]
        pm = max(m["accuracy_mean"] - lo, hi - m["accuracy_mean"])
        lines.append(f"| {m['name']} | {m['accuracy_mean']:.3f} ± {pm:.3f} | "
                     f"{m['macro_f1_mean']:.3f} | {_fmt_seconds(m['train_seconds'])} | "
                     f"{m['infer_ms_per_image']:.2f} | {_fmt_bytes(m['size_bytes'])} |")
    n_folds, n_test = result["folds"], sum(f["n_test"] for f in result["per_fold"])
    ci = (f"t-interval over {n_folds} folds ({n_test} test predictions)" if n_folds > 1
          else f"bootstrap over {n_test} test images")
    lines += ["", f"{dataset_label(result['dataset'])}: {result['n_images']} images, "
              f"{len(result['classes'])} classes, split {result['split']} (seed {result['seed']}); "
              f"± is the 95 % {ci}; times are per fold, on {result['cpu_count']} CPU cores "
              f"(torch threads: {result['torch_threads']}), "
              f"linear_probe's including the frozen backbone; CNN input {result['img_size']} px."]
    return "\n".join(lines) + "\n"
