"""Seeded stratified splits, the written manifest, and exact-duplicate leakage checks."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from sightwise.core import atomic_write_bytes, sha256_bytes
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
    else:
        # Rows without a split join train; a missing val or test is carved from train.
        samples = [replace(s, split=s.split or "train") for s in ds.samples]
        notes = []
        for name, frac in (("test", test), ("val", val)):
            if name not in have and "train" in {s.split for s in samples}:
                samples = _carve(samples, name, frac, len(ds.samples), seed)
                label = "validation" if name == "val" else name
                notes.append(f"carved a stratified {label} split from train (seed {seed})")
    return Dataset(ds.classes, samples, ds.root, ds.layout, ds.notes + notes)


def _carve(samples: list[Sample], name: str, frac: float, n_total: int, seed: int) -> list[Sample]:
    tr = np.array([i for i, s in enumerate(samples) if s.split == "train"])
    y = np.array([samples[i].label for i in tr])
    share = min(0.5, frac / max(1e-9, len(tr) / n_total))
    _, chosen = _strat(tr, y, share, seed)
    chosen_set = set(chosen.tolist())
    return [replace(s, split=name) if i in chosen_set else s for i, s in enumerate(samples)]


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


def find_label_conflicts(ds: Dataset) -> list[dict]:
    """Groups of byte-identical files given different labels: a labelling error (the same
    image cannot be two classes), whatever their splits."""
    by_hash: dict[str, list[Sample]] = defaultdict(list)
    for s in ds.samples:
        if s.sha256:
            by_hash[s.sha256].append(s)
    return [{"sha256": h, "items": [[s.source, ds.classes[s.label], s.split] for s in group]}
            for h, group in by_hash.items() if len({s.label for s in group}) > 1]


def drop_leakage(ds: Dataset) -> tuple[Dataset, int]:
    """Drop the copies of cross-split duplicates outside train (or outside the first split
    holding one). Duplicates within one split are not leakage and stay."""
    order = {"train": 0, "val": 1, "test": 2}
    drop: set[str] = set()
    for group in find_leakage(ds):
        splits = sorted({sp for _, sp in group["items"]}, key=lambda sp: order.get(sp or "", 3))
        drop.update(src for src, sp in group["items"] if sp != splits[0])
    kept = [s for s in ds.samples if s.source not in drop]
    return Dataset(ds.classes, kept, ds.root, ds.layout, ds.notes), len(ds.samples) - len(kept)


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
    atomic_write_bytes(path, data)
    return sha256_bytes(data)
