"""The model's view of a pool: calibrated probabilities and embeddings for every image, from
one pass of the bundle's ONNX graph (logits and embedding are outputs of the same run).

Images that cannot be decoded are reported by path and left out (ModelView.broken).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from sightwise.core import sha256_path, softmax
from sightwise.data.decode import decode_image
from sightwise.errors import ImageDecodeError
from sightwise.label.pool import Pool
from sightwise.label.session import ModelView


def bundle_version(bundle_dir: str | Path) -> str:
    """`local-<12 hex>` of bundle.json, the version `sightwise serve` reports for a bundle
    served from a folder (bundle.json lists every file's sha256, so any change shows)."""
    return "local-" + sha256_path(Path(bundle_dir) / "bundle.json")[:12]


def model_view(bundle: str | Path, pool: Pool, *, batch_size: int = 32, threads: int | None = None,
               progress: bool = True, log: Callable[[str], None] = print) -> ModelView:
    from tqdm.auto import tqdm

    from sightwise.runtime import Predictor

    pred = Predictor(bundle, batch_size=batch_size, threads=threads)
    n = len(pool)
    probs = np.zeros((n, len(pred.classes)), np.float32)
    emb: np.ndarray | None = None
    broken: dict[int, str] = {}
    chunk: list[tuple[int, object]] = []

    def flush() -> None:
        nonlocal emb
        if not chunk:
            return
        out = pred.run(pred.preprocess([im for _, im in chunk]), ["logits", "embedding"])
        if emb is None:
            emb = np.zeros((n, out["embedding"].shape[1]), np.float32)
        rows = [i for i, _ in chunk]
        probs[rows] = softmax(out["logits"], pred.temperature)
        emb[rows] = out["embedding"]
        chunk.clear()

    for i, it in enumerate(tqdm(pool.items, desc="model", unit="img", disable=not progress,
                                leave=False)):
        try:
            chunk.append((i, decode_image(it.path)))
        except ImageDecodeError as exc:
            broken[i] = str(exc)
            log(f"skipped {it.path}: {exc}")
            continue
        if len(chunk) >= batch_size:
            flush()
    flush()
    return ModelView(bundle_version(pred.bundle.path), list(pred.classes), probs, emb, broken)
