"""Images in, unit embeddings out, through `sightwise.runtime` (never torch).

`collect_images` turns a folder (recursive), a labelled dataset (folder-per-class, split
folders) or a CSV manifest into records (path, label, split); `embed_records` decodes them
in batches (undecodable files are reported by path and skipped) and embeds them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sightwise.bundle import Bundle, sha256_path
from sightwise.data.datasets import load_dataset
from sightwise.data.decode import decode_image, is_image_path
from sightwise.errors import DataError, ImageDecodeError
from sightwise.runtime import Predictor

LABEL_MODES = ("none", "top", "leaf")


def collect_images(source: str | Path, labels: str = "top") -> list[dict]:
    """[{path, label, split}] for every image under `source`.

    A CSV manifest or a folder with class sub-folders keeps its labels (and splits);
    `labels="none"`, or a folder that is not a dataset, gives every image with label None.
    """
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {LABEL_MODES}")
    root = Path(source)
    if not root.exists():
        raise DataError(f"not found: {root}")
    if root.is_file() or labels != "none":
        try:
            ds = load_dataset(root, labels="top" if labels == "none" else labels)
            return [{"path": str(Path(s.source).resolve()), "label": ds.classes[s.label], "split": s.split}
                    for s in ds.samples]
        except DataError:
            if root.is_file():
                raise
    files = sorted(f for f in root.rglob("*") if f.is_file() and is_image_path(f))
    if not files:
        raise DataError(f"{root}: no images found")
    return [{"path": str(f.resolve()), "label": None, "split": None} for f in files]


def bundle_provenance(bundle: Bundle, ref: str) -> dict:
    """What an index records about the bundle that embedded it."""
    model = dict(bundle.meta.model)
    return {"ref": str(ref), "path": str(Path(bundle.path).resolve()),
            "bundle_json_sha256": sha256_path(Path(bundle.path) / "bundle.json"),
            "task": bundle.task, "preprocessing": bundle.preprocessing.to_dict(),
            "model": {k: model[k] for k in ("name", "strategy") if k in model}}


# A linear probe trains only the head: the pooled features before it are the pretrained
# backbone's, as they came from ImageNet, and they tell the user's classes apart less well
# than features fine-tuned on them (docs/guides/search.md compares the two on one data set).
FROZEN_STRATEGIES = ("linear-probe", "pretrained")


def embedding_notes(meta: dict) -> list[str]:
    """Lines saying which embedding a bundle (its bundle.json, or an index's record of it)
    gives, and, when it is the frozen ImageNet one, how to get one tuned to the images.

    >>> embedding_notes({"task": "classification",
    ...                  "model": {"name": "resnet18", "strategy": "finetune"}})
    ['embedding: resnet18 fine-tuned on the images the bundle was trained on (pooled features)']
    """
    model = meta.get("model") or {}
    name, strategy = model.get("name", "the backbone"), model.get("strategy")
    if meta.get("task") == "embedding" or strategy in FROZEN_STRATEGIES:
        why = ("a linear probe trains only the head" if strategy == "linear-probe"
               else "this bundle was never trained on your images")
        return [f"embedding: {name}'s ImageNet features, frozen ({why})",
                "for search by your own classes a fine-tuned embedding is usually much better: "
                "`sightwise train DATA --strategy finetune --out RUN`, then index RUN/bundle "
                "(see docs/guides/search.md)"]
    if strategy == "finetune":
        return [f"embedding: {name} fine-tuned on the images the bundle was trained on "
                "(pooled features)"]
    if strategy == "scratch":
        return [f"embedding: {name} trained from scratch on the images the bundle was trained on"]
    return []  # an index made before this was recorded, or a bundle that does not say


def _decoded(records: list[dict], batch_size: int, on_error: Callable[[str, str], None]
             ) -> Iterator[tuple[list[dict], list]]:
    """Batches of (records, images) with undecodable files reported and left out."""
    for start in range(0, len(records), batch_size):
        recs, images = [], []
        for rec in records[start:start + batch_size]:
            try:
                images.append(decode_image(rec["path"]))
                recs.append(rec)
            except ImageDecodeError as exc:
                on_error(rec["path"], str(exc))
        yield recs, images


def embed_records(predictor: Predictor, records: list[dict], *, progress: bool = True,
                  on_error: Callable[[str, str], None] | None = None
                  ) -> tuple[np.ndarray, list[dict], list[tuple[str, str]]]:
    """(unit vectors (N, D), records that embedded, [(path, reason)] skipped).

    Each kept record gains `sha256` (of the file bytes) and `added_at` (UTC ISO time).
    """
    errors: list[tuple[str, str]] = []

    def failed(path: str, reason: str) -> None:
        errors.append((path, reason))
        if on_error is not None:
            on_error(path, reason)

    dim = int(predictor.bundle.meta.num_features)
    parts, kept = [np.zeros((0, dim), np.float32)], []
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    bar = tqdm(total=len(records), unit="img", desc="embedding", disable=not progress)
    for recs, images in _decoded(records, predictor.batch_size, failed):
        if images:
            parts.append(predictor.embed(images, normalize=True))
        kept += [{**r, "sha256": sha256_path(Path(r["path"])), "added_at": now} for r in recs]
        bar.update(predictor.batch_size)
    bar.close()
    return np.concatenate(parts), kept, errors


def throughput(predictor: Predictor, records: list[dict]) -> float:
    """Images per second through decode + embed (for bench/search.py)."""
    t0 = time.perf_counter()
    vecs, _, _ = embed_records(predictor, records, progress=False)
    return len(vecs) / max(time.perf_counter() - t0, 1e-9)
