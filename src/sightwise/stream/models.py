"""The two kinds of bundle `watch` runs on a frame, behind one small interface.

A classification bundle (task "classification", exported: model.onnx) runs through
`sightwise.runtime.Predictor`; a detector bundle (task "anomaly") through the inspection's
torch-free `Detector`. Both answer `run(image) -> FrameResult`: the fields of the frame's
record, the labels the frame counts towards (for events) and a caption; and draw heat maps
for peak frames and the annotated video with the product's own overlay functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sightwise.bundle import Bundle, load_bundle
from sightwise.core import sha256_path, top_k_indices
from sightwise.errors import BundleError


@dataclass(frozen=True)
class FrameResult:
    fields: dict             # merged into the frame's JSON record
    hits: dict[str, float]   # labels present in this frame (for events), with their scores
    caption: str             # one line for the annotated video
    patch_map: np.ndarray | None = None  # detector: the patch scores, for its heat map


def model_id(bundle: Bundle) -> str:
    """`<folder name>@<sha256 of bundle.json, 12 hex>`: bundle.json lists every file's hash,
    so this names the exact model that produced a record. A training run's `.../RUN/bundle`
    is named `RUN/bundle`."""
    p = bundle.path.resolve()
    name = f"{p.parent.name}/{p.name}" if p.name == "bundle" else p.name
    return f"{name}@{sha256_path(p / 'bundle.json')[:12]}"


class ClassifierModel:
    """Top-k calibrated probabilities per frame; the top class counts towards an event when
    its probability reaches `min_score` (and it is among `labels`, when given)."""

    task = "classification"

    def __init__(self, bundle: Bundle, *, top_k: int = 3, min_score: float = 0.5,
                 labels: Sequence[str] | None = None, threads: int | None = None,
                 int8: bool = False):
        from sightwise.runtime import Predictor

        self.predictor = Predictor(bundle, int8=int8, threads=threads, batch_size=1)
        self.classes = self.predictor.classes
        unknown = sorted(set(labels or ()) - set(self.classes))
        if unknown:
            raise ValueError(f"unknown label(s) {', '.join(unknown)}; the bundle's classes "
                             f"are {', '.join(self.classes)}")
        self.labels = set(labels) if labels else set(self.classes)
        self.top_k, self.min_score = int(top_k), float(min_score)
        self.id = model_id(bundle)

    def describe(self) -> dict:
        return {"model": self.id, "task": self.task, "classes": self.classes,
                "min_score": self.min_score, "labels": sorted(self.labels)}

    def run(self, image: Image.Image) -> FrameResult:
        probs = self.predictor.probabilities([image])[0]
        order = top_k_indices(probs, self.top_k)
        top = [{"label": self.classes[i], "score": round(float(probs[i]), 6)} for i in order]
        best, score = top[0]["label"], float(probs[order[0]])
        hits = {best: score} if score >= self.min_score and best in self.labels else {}
        return FrameResult({"top": top}, hits, f"{best} {score:.2f}")

    def heat_overlay(self, image: Image.Image, label: str, result: FrameResult) -> Image.Image:
        """The class activation map of `label` over the frame (one more forward pass)."""
        from sightwise.heatmap import overlay_cam

        cam, _, _ = self.predictor.cam(image, self.classes.index(label))
        return overlay_cam(image, cam)

    def frame_overlay(self, image: Image.Image, result: FrameResult) -> Image.Image:
        return image  # the annotated video shows the label and score; CAM only for peaks


class DetectorModel:
    """Anomaly score per frame; a frame above the threshold counts towards "anomaly"."""

    task = "anomaly"
    LABEL = "anomaly"

    def __init__(self, bundle: Bundle, *, threshold: float | None = None,
                 threads: int | None = None):
        from sightwise.anomaly.detector import Detector

        self.detector = Detector(bundle, threads=threads)
        self.threshold = float(self.detector.threshold if threshold is None else threshold)
        self.id = model_id(bundle)

    def describe(self) -> dict:
        return {"model": self.id, "task": self.task, "threshold": self.threshold}

    def run(self, image: Image.Image) -> FrameResult:
        r = self.detector.inspect([image])[0]
        defect = r.score > self.threshold
        hits = {self.LABEL: r.score} if defect else {}
        fields = {"score": round(r.score, 6), "verdict": "defect" if defect else "ok"}
        return FrameResult(fields, hits, f"{fields['verdict']} {r.score:.3g}", r.patch_map)

    def heat_overlay(self, image: Image.Image, label: str, result: FrameResult) -> Image.Image:
        return self.detector.overlay(image, result.patch_map)

    def frame_overlay(self, image: Image.Image, result: FrameResult) -> Image.Image:
        return self.detector.overlay(image, result.patch_map)


def load_model(path: str | Path, *, threads: int | None = None, top_k: int = 3,
               min_score: float = 0.5, labels: Sequence[str] | None = None,
               threshold: float | None = None, int8: bool = False):
    """The bundle at `path` as a ClassifierModel or DetectorModel, by bundle.json's task."""
    bundle = load_bundle(path)
    if bundle.task == "anomaly":
        if labels or int8:
            raise ValueError("--labels and --int8 are for classification bundles")
        return DetectorModel(bundle, threshold=threshold, threads=threads)
    if bundle.task == "classification":
        if threshold is not None:
            raise ValueError("--threshold is for detector bundles; use --min-score")
        return ClassifierModel(bundle, top_k=top_k, min_score=min_score, labels=labels,
                               threads=threads, int8=int8)
    raise BundleError(f"{path}: task {bundle.task!r} cannot be watched (classification or "
                      "anomaly bundles only)")
