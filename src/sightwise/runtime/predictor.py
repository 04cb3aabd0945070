"""`Predictor`: a bundle's ONNX graph behind onnxruntime, with the bundle's preprocessing.

One forward pass gives logits, the pooled embedding and the last feature map (DESIGN.md
principle 2); probabilities (calibrated: softmax(logits / T)), search vectors and CAM maps
all come from it. Imports onnxruntime, numpy, Pillow and torch-free sightwise modules only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from sightwise.bundle import Bundle, load_bundle
from sightwise.core import make_session, softmax, top_k_indices
from sightwise.data.decode import decode_image, to_rgb
from sightwise.data.preprocess import Preprocessing, normalize, resize_rgb
from sightwise.errors import BundleError, ImageDecodeError
from sightwise.runtime.cam import class_activation_map
from sightwise.types import ClassScore, Prediction

OUTPUTS = ("logits", "embedding", "features")
HEAD = "head.npz"
__all__ = ["Predictor", "softmax", "make_session", "OUTPUTS"]


class Predictor:
    """Classify, embed and explain images with a bundle's ONNX graph.

    `int8=True` runs model.int8.onnx; `threads` sets onnxruntime's intra-op threads (None:
    one per core); images are run `batch_size` at a time.
    """

    def __init__(self, bundle_or_path: Bundle | str | Path, *, int8: bool = False,
                 threads: int | None = None, batch_size: int = 32):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.bundle = (bundle_or_path if isinstance(bundle_or_path, Bundle)
                       else load_bundle(bundle_or_path))
        graph = self.bundle.graph(int8=int8)  # the one rule for which graph may run
        self.model_file = graph.name
        self.classes: list[str] = self.bundle.classes
        self.preprocessing: Preprocessing = self.bundle.preprocessing
        self.temperature: float = self.bundle.temperature
        self.batch_size = int(batch_size)
        self.session = make_session(graph, threads)
        self._check_graph()
        self._head: tuple[np.ndarray, np.ndarray] | None = None

    def _check_graph(self) -> None:
        """The graph must take the bundle's input size and answer one logit per class:
        a bundle.json that disagrees with its graph is refused here, in one line."""
        where = f"{self.bundle.path}: {self.model_file}"
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        if "image" not in inputs or not set(OUTPUTS) <= set(outputs):
            raise BundleError(f"{where} is not a Sightwise graph (inputs {sorted(inputs)}, "
                              f"outputs {sorted(outputs)})")
        s = self.preprocessing.size
        fixed = [d for d in inputs["image"][1:] if isinstance(d, int)]
        if fixed and fixed != [3, s, s][-len(fixed):]:
            raise BundleError(f"{where} takes input {inputs['image']}, but bundle.json says "
                              f"{s}x{s} px")
        n = outputs["logits"][-1]
        if self.bundle.task == "classification" and isinstance(n, int) and n != len(self.classes):
            raise BundleError(f"{where} answers {n} classes, but bundle.json names "
                              f"{len(self.classes)}")

    # -- arrays in, arrays out -------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Pillow images (any mode) -> normalised float32 (N,3,S,S), as in training."""
        pre = self.preprocessing
        if not images:
            return np.zeros((0, 3, pre.size, pre.size), np.float32)
        return normalize(np.stack([resize_rgb(to_rgb(im), pre) for im in images]), pre)

    def run(self, batch: np.ndarray, outputs: Sequence[str] = OUTPUTS) -> dict[str, np.ndarray]:
        """Run the graph on float32 NCHW input (in chunks of batch_size)."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        s = self.preprocessing.size
        if x.ndim != 4 or x.shape[1:] != (3, s, s):
            raise ValueError(f"expected a float32 batch of shape (N, 3, {s}, {s}), got {x.shape}")
        names = list(outputs)
        parts = [self.session.run(names, {"image": x[i:i + self.batch_size]})
                 for i in range(0, len(x), self.batch_size)]
        if not parts:
            return {n: np.zeros((0,), np.float32) for n in names}
        return {n: np.concatenate([p[j] for p in parts]) for j, n in enumerate(names)}

    def _outputs(self, images: Sequence[Image.Image], names: Sequence[str]) -> dict:
        """Preprocess and run chunk by chunk so a long list never sits in memory as floats."""
        parts = [self.run(self.preprocess(images[i:i + self.batch_size]), names)
                 for i in range(0, len(images), self.batch_size)]
        return {n: np.concatenate([p[n] for p in parts]) for n in names} if parts else {}

    # -- products of the one pass ----------------------------------------------------------
    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Calibrated class probabilities (N, C)."""
        if not images:
            return np.zeros((0, len(self.classes)), np.float32)
        return softmax(self._outputs(images, ["logits"])["logits"], self.temperature)

    def embed(self, images: Sequence[Image.Image], *, normalize: bool = False) -> np.ndarray:
        """Pooled pre-logits embeddings (N, D); `normalize=True` scales rows to unit L2."""
        if not images:
            return np.zeros((0, int(self.bundle.meta.num_features or 0)), np.float32)
        emb = self._outputs(images, ["embedding"])["embedding"].astype(np.float32)
        if normalize:
            emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return emb

    def predict_images(self, images: Sequence[Image.Image], top_k: int = 3) -> list[Prediction]:
        """Top-k calibrated answers; `source` is the image's filename or `<image i>`."""
        probs = self.probabilities(images)
        return [Prediction(source=getattr(im, "filename", "") or f"<image {i}>",
                           top=self._top(p, top_k))
                for i, (im, p) in enumerate(zip(images, probs, strict=True))]

    def predict_paths(self, paths: Sequence[str | Path], top_k: int = 3) -> list[Prediction]:
        """One Prediction per path; an undecodable file gets `error`, the rest are answered."""
        results: list[Prediction] = []
        for start in range(0, len(paths), self.batch_size):
            chunk = [str(p) for p in paths[start:start + self.batch_size]]
            decoded: dict[int, Image.Image] = {}
            errors: dict[int, str] = {}
            for i, p in enumerate(chunk):
                try:
                    decoded[i] = decode_image(p)
                except ImageDecodeError as exc:
                    errors[i] = str(exc)
            order = sorted(decoded)
            probs = self.probabilities([decoded[i] for i in order])
            row = {i: probs[j] for j, i in enumerate(order)}
            results += [Prediction(source=p, error=errors[i]) if i in errors
                        else Prediction(source=p, top=self._top(row[i], top_k))
                        for i, p in enumerate(chunk)]
        return results

    def cam(self, image: Image.Image, class_index: int | None = None
            ) -> tuple[np.ndarray, int, np.ndarray]:
        """(map (h,w) float32 in [0,1] at feature resolution, class index, probabilities).

        The class defaults to the top prediction. The head's weights come from head.npz
        (written at export), so no torch and no graph surgery are needed.
        """
        out = self.run(self.preprocess([image]), ["logits", "features"])
        probs = softmax(out["logits"], self.temperature)[0]
        c = int(np.argmax(probs)) if class_index is None else int(class_index)
        if not 0 <= c < len(self.classes):
            raise ValueError(f"class_index {c} outside 0..{len(self.classes) - 1}")
        weight, _ = self.head()
        return class_activation_map(out["features"][0], weight, c), c, probs

    def head(self) -> tuple[np.ndarray, np.ndarray]:
        """The linear head (weight (C,D), bias (C,)) saved at export, float32."""
        if self._head is None:
            with np.load(self.bundle.file(HEAD), allow_pickle=False) as z:
                self._head = (z["weight"].astype(np.float32), z["bias"].astype(np.float32))
        return self._head

    def _top(self, probs: np.ndarray, k: int) -> tuple[ClassScore, ...]:
        return tuple(ClassScore(self.classes[i], float(probs[i])) for i in top_k_indices(probs, k))
