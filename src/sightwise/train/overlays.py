"""Class-activation overlays of test images for the report: correct and mistaken ones."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from sightwise.data.preprocess import Preprocessing
from sightwise.evaluate.figures import plot_images_grid
from sightwise.heatmap import overlay_cam
from sightwise.models.cam import class_activation_map
from sightwise.models.classifier import Classifier
from sightwise.train.augment import to_input


def pick_examples(y_true: np.ndarray, probs: np.ndarray, per_class: int = 2,
                  max_mistakes: int = 8) -> list[int]:
    """Per true class its most confident correct images, then the most confident mistakes."""
    pred = probs.argmax(1)
    conf = probs.max(1)
    chosen: list[int] = []
    for c in np.unique(y_true):
        ok = np.flatnonzero((y_true == c) & (pred == c))
        chosen += ok[np.argsort(-conf[ok])][:per_class].tolist()
    wrong = np.flatnonzero(pred != y_true)
    chosen += wrong[np.argsort(-conf[wrong])][:max_mistakes].tolist()
    return chosen


def cam_overlays(model: Classifier, images: np.ndarray, pre: Preprocessing) -> list[Image.Image]:
    """Overlay of the predicted class's activation map on each uint8 (S,S,3) image."""
    if len(images) == 0:
        return []
    x = to_input(torch.from_numpy(np.ascontiguousarray(images)), pre)
    cams, _ = class_activation_map(model.eval(), x)
    return [overlay_cam(Image.fromarray(img), cam.numpy()) for img, cam in zip(images, cams,
                                                                                strict=True)]


def overlay_figure(model, x_test, y_test, probs, classes, pre, path) -> str | None:
    idx = pick_examples(y_test, probs)
    if not idx:
        return None
    pred = probs.argmax(1)
    tiles = [np.asarray(im) for im in cam_overlays(model, x_test[idx], pre)]
    titles = [("" if pred[i] == y_test[i] else "MISTAKE ") +
              f"{classes[y_test[i]]} -> {classes[pred[i]]} ({probs[i].max():.2f})" for i in idx]
    return plot_images_grid(np.stack(tiles), titles, path, ncols=4)
