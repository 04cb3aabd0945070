"""Class-activation overlays of test images for the report: correct and mistaken ones, each
beside its original, with a colour legend taken from the overlay function itself."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from sightwise.data.preprocess import Preprocessing
from sightwise.evaluate.figures import plot_heatmap_pairs
from sightwise.heatmap import overlay_cam
from sightwise.models.cam import class_activation_map
from sightwise.models.classifier import Classifier
from sightwise.train.augment import to_input

# The heat map's weight in the blend: the original is shown beside it, so the overlay can
# stay translucent enough to show which part of the object lies under the evidence.
CAM_ALPHA = 0.4
MAX_CLASSES_SHOWN = 12
MAX_MISTAKES_SHOWN = 6


def pick_examples(y_true: np.ndarray, probs: np.ndarray, per_class: int | None = None,
                  max_classes: int = MAX_CLASSES_SHOWN,
                  max_mistakes: int = MAX_MISTAKES_SHOWN) -> list[int]:
    """For the first `max_classes` classes present, their most confident correct images
    (`per_class`; default 2 up to 4 classes, else 1), then the most confident mistakes."""
    pred = probs.argmax(1)
    conf = probs.max(1)
    classes = np.unique(y_true)[:max_classes]
    if per_class is None:
        per_class = 2 if len(classes) <= 4 else 1
    chosen: list[int] = []
    for c in classes:
        ok = np.flatnonzero((y_true == c) & (pred == c))
        chosen += ok[np.argsort(-conf[ok], kind="stable")][:per_class].tolist()
    wrong = np.flatnonzero(pred != y_true)
    chosen += wrong[np.argsort(-conf[wrong], kind="stable")][:max_mistakes].tolist()
    return chosen


def cam_overlays(model: Classifier, images: np.ndarray, pre: Preprocessing,
                 alpha: float = CAM_ALPHA) -> list[Image.Image]:
    """Overlay of the predicted class's activation map on each uint8 (S,S,3) image."""
    if len(images) == 0:
        return []
    x = to_input(torch.from_numpy(np.ascontiguousarray(images)), pre)
    cams, _ = class_activation_map(model.eval(), x)
    return [overlay_cam(Image.fromarray(img), cam.numpy(), alpha=alpha)
            for img, cam in zip(images, cams, strict=True)]


def heat_legend_colors() -> np.ndarray:
    """(256, 3) uint8: what `overlay_cam` paints for values 0..1, read back from it on a
    black strip at full weight, so the legend follows any change to its colours."""
    ramp = np.linspace(0.0, 1.0, 256, dtype=np.float32)[None, :]
    strip = overlay_cam(Image.new("RGB", (256, 1)), ramp, alpha=1.0)
    return np.asarray(strip.convert("RGB"), np.uint8)[0]


def example_title(true_name: str, pred_name: str, p: float) -> str:
    if true_name == pred_name:
        return f"{true_name} (correct, p={p:.2f})"
    return f"MISTAKE: true {true_name}\npredicted {pred_name} (p={p:.2f})"


def overlay_figure(model, x_test, y_test, probs, classes, pre, path) -> str | None:
    idx = pick_examples(y_test, probs)
    if not idx:
        return None
    pred = probs.argmax(1)
    overlays = [np.asarray(im) for im in cam_overlays(model, x_test[idx], pre)]
    titles = [example_title(classes[y_test[i]], classes[pred[i]], float(probs[i].max()))
              for i in idx]
    return plot_heatmap_pairs([x_test[i] for i in idx], overlays, titles, path,
                              legend_colors=heat_legend_colors(),
                              marked=[pred[i] != y_test[i] for i in idx])
