"""Batch prediction rows, and the single-machine engine that makes them.

A row is one input file: `path, label, probability, model_version, error, sha256`, then
`label_2, probability_2, ...` up to top-k (the Contract of issue #23: top-1 in
`label`/`probability`, one row per input file, readable or not). Both engines build rows
with `predict_rows` from the same decoded arrays, so they answer alike; the Ray engine runs
it inside its actors (`sightwise.scale.ray_engine`).

`local_rows` is the single-machine engine: a bounded thread pool reads, hashes, decodes and
resizes files ahead of the model (`sources.decoded`); onnxruntime runs `batch_size` images
at a time on the main thread. Nothing is kept after its batch is yielded, so memory does not
grow with the number of files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from sightwise.core import softmax, top_k_indices
from sightwise.data.preprocess import Preprocessing, normalize, resize_rgb
from sightwise.runtime import Predictor
from sightwise.scale.sources import Loaded, batched, decoded, load_bytes, load_file

BASE_COLUMNS = ("path", "label", "probability", "model_version", "error", "sha256")


def columns(top_k: int) -> list[str]:
    """The output header for `top_k` answers per file.

    >>> columns(2)
    ['path', 'label', 'probability', 'model_version', 'error', 'sha256', 'label_2', 'probability_2']
    """
    extra = [c for k in range(2, max(1, top_k) + 1) for c in (f"label_{k}", f"probability_{k}")]
    return [*BASE_COLUMNS, *extra]


def resized(item: Loaded, pre: Preprocessing) -> Loaded:
    """The decoded image resized for the model (uint8), the full-size image dropped."""
    if item.image is not None:
        try:
            item.array = resize_rgb(item.image, pre)
        except Exception as exc:  # one bad image costs its row, not the run
            item.error = f"resizing failed ({type(exc).__name__}: {exc})"
        item.image = None
    return item


def file_preparer(pre: Preprocessing) -> Callable[[str], Loaded]:
    """What a decode thread does with one path: read, hash, decode, resize."""
    return lambda path: resized(load_file(path), pre)


def bytes_preparer(pre: Preprocessing) -> Callable[[str, bytes], Loaded]:
    return lambda path, data: resized(load_bytes(path, data), pre)


# Called with the decoded items of a batch, their calibrated probabilities, their embeddings
# and the model's milliseconds per image (how `predict --out --log` feeds the monitor).
BatchHook = Callable[[list[Loaded], np.ndarray, np.ndarray, float], None]


def probabilities(predictor: Predictor, arrays: list[np.ndarray]) -> np.ndarray:
    """Calibrated probabilities (N, C) of resized uint8 images (Predictor.preprocess's
    normalisation; the resize already happened in the decode pool)."""
    if not arrays:
        return np.zeros((0, len(predictor.classes)), np.float32)
    x = normalize(np.stack(arrays), predictor.preprocessing)
    return softmax(predictor.run(x, ["logits"])["logits"], predictor.temperature)


def _hooked_probabilities(predictor: Predictor, items: list[Loaded], hook: BatchHook
                          ) -> np.ndarray:
    """`probabilities`, plus the embedding from the same run, handed to `hook`."""
    t0 = time.perf_counter()
    x = normalize(np.stack([it.array for it in items]), predictor.preprocessing)
    out = predictor.run(x, ["logits", "embedding"])
    probs = softmax(out["logits"], predictor.temperature)
    hook(items, probs, out["embedding"], (time.perf_counter() - t0) * 1000 / len(items))
    return probs


def predict_rows(predictor: Predictor, items: list[Loaded], *, top_k: int,
                 model_version: str, hook: BatchHook | None = None) -> list[dict]:
    """One row per item, in order; undecodable items carry their error and no label."""
    ok = [i for i, it in enumerate(items) if it.array is not None]
    if ok and hook is not None:
        probs = _hooked_probabilities(predictor, [items[i] for i in ok], hook)
    else:
        probs = probabilities(predictor, [items[i].array for i in ok]) if ok else []
    by_item = dict(zip(ok, probs, strict=True))
    names = columns(top_k)
    rows = []
    for i, it in enumerate(items):
        row = _blank(it, names, model_version)
        if i in by_item:
            for rank, c in enumerate(top_k_indices(by_item[i], top_k), start=1):
                suffix = "" if rank == 1 else f"_{rank}"
                row[f"label{suffix}"] = predictor.classes[c]
                row[f"probability{suffix}"] = float(by_item[i][c])
        rows.append(row)
    return rows


def error_rows(items: list[Loaded], *, top_k: int, model_version: str) -> list[dict]:
    """Rows of files that never reached a model (refused before reading)."""
    names = columns(top_k)
    return [_blank(it, names, model_version) for it in items]


def _blank(item: Loaded, names: list[str], model_version: str) -> dict:
    row = dict.fromkeys(names)
    row.update(path=item.path, model_version=model_version, sha256=item.sha256, error=item.error)
    return row


def default_workers() -> int:
    """Decode threads: the cores, at most 4 (past that, onnxruntime wants the cores)."""
    return max(1, min(4, os.cpu_count() or 1))


def local_rows(predictor: Predictor, paths: Iterable[str], *, top_k: int, model_version: str,
               batch_size: int = 32, workers: int | None = None,
               hook: BatchHook | None = None) -> Iterator[list[dict]]:
    """Rows batch by batch, decode running `2 * batch_size` files ahead of the model."""
    prepare = file_preparer(predictor.preprocessing)
    stream = decoded(paths, prepare, workers=workers or default_workers(), window=2 * batch_size)
    for items in batched(stream, batch_size):
        yield predict_rows(predictor, items, top_k=top_k, model_version=model_version,
                           hook=hook)
