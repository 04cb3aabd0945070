"""Predict with a bundle: ONNX Runtime when the bundle has a graph, else PyTorch.

Each unreadable image gets its own error; the others are still answered.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sightwise.bundle import load_bundle
from sightwise.data.decode import decode_image
from sightwise.data.preprocess import normalize, resize_rgb
from sightwise.errors import ImageDecodeError
from sightwise.types import ClassScore, Prediction


def top_k(probs: np.ndarray, classes: Sequence[str], k: int) -> tuple[ClassScore, ...]:
    order = np.argsort(-probs)[: max(1, min(k, len(classes)))]
    return tuple(ClassScore(classes[i], float(probs[i])) for i in order)


def predict_files(bundle_ref: str, paths: Sequence[str], *, top_k_n: int | None = None,
                  top_k: int = 3, batch_size: int = 32) -> list[Prediction]:
    from sightwise.registry.resolve import resolve_bundle

    # NAME@ALIAS, NAME/VERSION or a folder; resolve_bundle verifies every file's sha256.
    bundle = load_bundle(resolve_bundle(bundle_ref), verify=False)
    k = top_k_n or top_k
    if has_gated_onnx(bundle):
        from sightwise.runtime import Predictor

        return Predictor(bundle).predict_paths(paths, top_k=k)
    return _predict_torch(bundle, paths, k, batch_size)


def has_gated_onnx(bundle) -> bool:
    """Use the ONNX graph when it passed its parity gate (or the user forced it); a bundle
    whose graph failed the gate falls back to its PyTorch weights."""
    export = bundle.meta.get("export", {})
    return "model.onnx" in bundle.meta.get("files", {}) and (
        export.get("fp32_passed", export.get("parity_passed", False)) or export.get("forced", False))


def _predict_torch(bundle, paths, k, batch_size) -> list[Prediction]:
    import torch

    from sightwise.models.io import load_classifier

    model = load_classifier(bundle)
    pre = bundle.preprocessing
    results: list[Prediction | None] = [None] * len(paths)
    good, arrays = [], []
    for i, p in enumerate(paths):
        try:
            arrays.append(resize_rgb(decode_image(p), pre))
            good.append(i)
        except ImageDecodeError as exc:
            results[i] = Prediction(source=str(p), error=str(exc))
    for start in range(0, len(good), batch_size):
        idx = good[start:start + batch_size]
        x = torch.from_numpy(normalize(np.stack(arrays[start:start + batch_size]), pre))
        with torch.inference_mode():
            logits = model(x.contiguous(memory_format=torch.channels_last)).numpy()
        z = logits / bundle.temperature
        z = z - z.max(1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        for j, i in enumerate(idx):
            results[i] = Prediction(source=str(paths[i]), top=top_k(probs[j], bundle.classes, k))
    return results  # type: ignore[return-value]
