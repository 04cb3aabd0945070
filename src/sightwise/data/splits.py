"""Seeded stratified splits, the written manifest, and exact-duplicate leakage checks."""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from sightwise.data.datasets import Dataset
from sightwise.types import Sample


def assign_splits(ds: Dataset, *, seed: int = 0, val: float = 0.15, test: float = 0.15) -> Dataset:
    """Fill in missing splits, stratified by class and seeded.

    No split at all -> 70/15/15. Train and test given but no val -> val is carved from train
    (the same fraction of the whole). Given splits are never moved.
    """
    have = {s.split for s in ds.samples}
    if have <= {None}:
        idx = np.arange(len(ds.samples))
        y = np.array([s.label for s in ds.samples])
        train, rest = _strat(idx, y, test + val, seed)
        val_idx, test_idx = _strat(rest, y[rest], test / (test + val), seed)
        names = {int(i): "train" for i in train}
        names.update({int(i): "val" for i in val_idx})
        names.update({int(i): "test" for i in test_idx})
        samples = [replace(s, split=names[i]) for i, s in enumerate(ds.samples)]
        notes = [f"made a stratified {1 - val - test:.0%}/{val:.0%}/{test:.0%} split (seed {seed})"]
    elif "val" not in have and "train" in have:
        tr = np.array([i for i, s in enumerate(ds.samples) if s.split == "train"])
        y = np.array([ds.samples[i].label for i in tr])
        frac = min(0.5, val / max(1e-9, len(tr) / len(ds.samples)))
        _, val_idx = _strat(tr, y, frac, seed)
        chosen = set(val_idx.tolist())
        samples = [replace(s, split="val") if i in chosen else s for i, s in enumerate(ds.samples)]
        notes = [f"carved a stratified validation split from train (seed {seed})"]
    else:
        samples, notes = [replace(s, split=s.split or "train") for s in ds.samples], []
    return Dataset(ds.classes, samples, ds.root, ds.layout, ds.notes + notes)


def _strat(idx: np.ndarray, y: np.ndarray, frac: float, seed: int):
    """Stratify when every class can give one to each side, else a plain seeded split."""
    counts = np.bincount(y)
    strat = y if counts[counts > 0].min() >= 2 else None
    try:
        return train_test_split(idx, test_size=frac, random_state=seed, stratify=strat)
    except ValueError:  # too few per class for the requested fraction
        return train_test_split(idx, test_size=frac, random_state=seed)


def find_leakage(ds: Dataset) -> list[dict]:
    """Groups of byte-identical files that appear in more than one split."""
    by_hash: dict[str, list[Sample]] = defaultdict(list)
    for s in ds.samples:
        if s.sha256:
            by_hash[s.sha256].append(s)
    groups = []
    for h, group in by_hash.items():
        if len({s.split for s in group}) > 1:
            groups.append({"sha256": h, "items": [[s.source, s.split] for s in group]})
    return groups


def drop_leakage(ds: Dataset) -> tuple[Dataset, int]:
    """Keep the train copy of each leaked file (or the first), drop the others."""
    keep: dict[str, Sample] = {}
    order = {"train": 0, "val": 1, "test": 2}
    for s in sorted(ds.samples, key=lambda s: order.get(s.split or "train", 3)):
        keep.setdefault(s.sha256 or s.source, s)
    kept = [s for s in ds.samples if keep.get(s.sha256 or s.source) is s]
    dropped = len(ds.samples) - len(kept)
    return Dataset(ds.classes, kept, ds.root, ds.layout, ds.notes), dropped


def manifest_rows(ds: Dataset) -> list[list[str]]:
    rows = []
    for s in sorted(ds.samples, key=lambda s: s.source):
        rows.append([_relative(s.source, ds.root), ds.classes[s.label], s.split or "", s.sha256])
    return rows


def _relative(source: str, root: Path) -> str:
    """Paths relative to the dataset root, so the manifest hash does not depend on where
    the data happens to be mounted."""
    if source.startswith("npz://"):
        file, frag = source[len("npz://"):].rsplit("#", 1)
        return f"npz://{Path(file).name}#{frag}"
    try:
        return Path(source).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return source


def write_manifest(ds: Dataset, path: Path) -> str:
    """Write path,label,split,sha256 (sorted) atomically; return the file's sha256."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "label", "split", "sha256"])
    w.writerows(manifest_rows(ds))
    data = buf.getvalue().encode("utf-8")
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()
