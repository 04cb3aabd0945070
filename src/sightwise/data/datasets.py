"""Datasets: folder-per-class, split folders, CSV manifest, MedMNIST-style .npz.

Every form becomes the same thing: a list of `Sample` (source, label, split, sha256) and the
class names. Splits the data brings are respected; missing ones are made here (`splits.py`).

Where data may come from (so a manifest cannot make a run read /etc/shadow or /dev/zero):
- a CSV manifest's paths resolve inside the manifest's own folder; a row pointing outside
  it (an absolute path elsewhere, or ``..``) stops the run naming the row, unless
  `allow_outside=True` (`train --allow-outside`);
- folders are scanned without following symbolic links (linked files and folders are
  listed in the run's notes and left out);
- only regular files are read (devices, FIFOs and sockets are refused before a byte is
  read) and each at most `decode.MAX_FILE_BYTES`.
"""

from __future__ import annotations

import csv
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sightwise.core import sha256_bytes, sha256_path
from sightwise.data.decode import MAX_FILE_BYTES, is_image_path
from sightwise.errors import DataError
from sightwise.types import SPLITS, Sample

NPZ_SCHEME = "npz://"


@dataclass
class Dataset:
    """Samples with integer labels indexing `classes`; `root` anchors relative paths."""

    classes: list[str]
    samples: list[Sample]
    root: Path
    layout: str
    notes: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {class: n}} for the summary printed before training."""
        out: dict[str, dict[str, int]] = {}
        for s in self.samples:
            per = out.setdefault(s.split or "unsplit", {c: 0 for c in self.classes})
            per[self.classes[s.label]] += 1
        return out




def load_dataset(path: str | Path, *, labels: str = "top", allow_outside: bool = False) -> Dataset:
    """Read any supported layout. `labels="leaf"` names a class by its whole folder path
    (e.g. ``Fruit/Apple/Golden-Delicious``) instead of the top folder; `allow_outside` lets
    a CSV manifest name files outside its own folder."""
    root = Path(path)
    if not root.exists():
        raise DataError(f"dataset not found: {root}")
    if root.is_file() and root.suffix.lower() == ".npz":
        return _load_npz(root)
    if root.is_file() and root.suffix.lower() in (".csv", ".txt"):
        return _load_csv(root, allow_outside)
    if not root.is_dir():
        raise DataError(f"{root}: expected a folder, a .csv manifest or a .npz file")
    split_dirs = [root / s for s in SPLITS if (root / s).is_dir()]
    if (root / "train").is_dir() and len(split_dirs) >= 2:
        return _load_split_folders(root, split_dirs, labels)
    return _load_class_folders(root, labels)


def _class_of(file: Path, base: Path, labels: str) -> str | None:
    rel = file.relative_to(base).parent.parts
    if not rel:
        return None  # images lying loose in the root belong to no class
    return "/".join(rel) if labels == "leaf" else rel[0]


def _scan(base: Path, labels: str, notes: list[str]) -> list[tuple[Path, str]]:
    """Image files under `base` by class; symbolic links are not followed (pathlib's rglob
    does not descend into linked folders) and are named in `notes`."""
    found, links = [], []
    for file in sorted(base.rglob("*")):
        if file.is_symlink():
            links.append(file)
        elif file.is_file() and is_image_path(file):
            cls = _class_of(file, base, labels)
            if cls is not None:
                found.append((file, cls))
    if links:
        shown = ", ".join(str(p.relative_to(base)) for p in links[:5])
        notes.append(f"left out {len(links)} symbolic link(s) (links are not followed): {shown}"
                     + (", ..." if len(links) > 5 else ""))
    return found


def _make(root: Path, rows: list[tuple[str, str, str | None]], layout: str) -> Dataset:
    """rows: (absolute source, class name, split) -> Dataset with hashed samples."""
    if not rows:
        raise DataError(f"{root}: no images found (looked for {layout} layout)")
    classes = sorted({c for _, c, _ in rows})
    index = {c: i for i, c in enumerate(classes)}
    samples = [
        Sample(source=src, label=index[c], split=sp, sha256=_hash_source(src))
        for src, c, sp in rows
    ]
    return Dataset(classes=classes, samples=samples, root=root, layout=layout)


def _hash_source(src: str) -> str:
    try:
        st = os.stat(src)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE_BYTES:
            return ""  # the decoder refuses it by path later, without reading it
        return sha256_path(src)
    except OSError:
        return ""  # unreadable: the decoder reports it by path later


def _load_class_folders(root: Path, labels: str) -> Dataset:
    notes: list[str] = []
    rows = [(str(f), c, None) for f, c in _scan(root, labels, notes)]
    ds = _make(root, rows, "folder-per-class")
    ds.notes += notes
    return ds


def _load_split_folders(root: Path, split_dirs: list[Path], labels: str) -> Dataset:
    rows, notes = [], []
    for d in split_dirs:
        rows += [(str(f), c, d.name) for f, c in _scan(d, labels, notes)]
    ds = _make(root, rows, "split-folders")
    ds.notes += notes
    return ds


def _load_csv(path: Path, allow_outside: bool = False) -> Dataset:
    base = path.parent
    with open(path, newline="", encoding="utf-8") as f:
        reader = list(csv.reader(f))
    if not reader:
        raise DataError(f"{path}: empty manifest")
    header = [h.strip().lower() for h in reader[0]]
    if "path" in header and "label" in header:
        ip, il = header.index("path"), header.index("label")
        isp = header.index("split") if "split" in header else None
        body, first_line = reader[1:], 2
    else:
        ip, il, isp = 0, 1, (2 if len(reader[0]) > 2 else None)
        body, first_line = reader, 1
    rows, outside = [], []
    for lineno, rec in enumerate(body, start=first_line):
        if not rec or not "".join(rec).strip():
            continue
        if len(rec) <= max(ip, il):
            raise DataError(f"{path}:{lineno}: expected path,label[,split]")
        p = Path(rec[ip].strip())
        split = rec[isp].strip().lower() if isp is not None and len(rec) > isp else None
        if split and split not in SPLITS:
            raise DataError(f"{path}:{lineno}: split {split!r} is not one of {SPLITS}")
        full = p if p.is_absolute() else base / p
        if not allow_outside and not _within(base, full):
            outside.append(f"{path.name}:{lineno}: {p}")
        rows.append((str(full), rec[il].strip(), split or None))
    if outside:
        raise DataError(f"{len(outside)} manifest row(s) point outside {base} (e.g. "
                        f"{'; '.join(outside[:3])}); paths resolve inside the manifest's folder "
                        "unless --allow-outside")
    return _make(base, rows, "csv")


def _within(base: Path, path: Path) -> bool:
    """True when `path` (links resolved) lies inside `base`."""
    try:
        path.resolve().relative_to(base.resolve())
    except ValueError:
        return False
    return True


def _load_npz(path: Path) -> Dataset:
    with np.load(path, allow_pickle=False) as z:  # never unpickle user files
        keys = set(z.files)
        present = [s for s in SPLITS if f"{s}_images" in keys and f"{s}_labels" in keys]
        if not present:
            raise DataError(f"{path}: expected arrays {{train,val,test}}_images / _labels")
        labels = {s: np.asarray(z[f"{s}_labels"]).reshape(-1).astype(np.int64) for s in present}
        images = {s: z[f"{s}_images"] for s in present}
        names = [str(v) for v in z["classes"]] if "classes" in keys else None
    all_labels = np.concatenate(list(labels.values()))
    classes = names or [str(v) for v in sorted(set(all_labels.tolist()))]
    index = {int(v): i for i, v in enumerate(sorted(set(all_labels.tolist())))}
    samples = []
    for s in present:
        for i, (img, lab) in enumerate(zip(images[s], labels[s], strict=True)):
            src = f"{NPZ_SCHEME}{path.resolve()}#{s}/{i}"
            label = int(lab) if names else index[int(lab)]
            samples.append(Sample(src, label, s, sha256_bytes(np.ascontiguousarray(img).tobytes())))
    return Dataset(classes=classes, samples=samples, root=path.parent, layout="npz")


def read_npz_image(source: str) -> np.ndarray:
    """The array behind an ``npz://file#split/index`` source."""
    file, frag = source[len(NPZ_SCHEME):].rsplit("#", 1)
    split, idx = frag.split("/")
    with np.load(file, allow_pickle=False) as z:
        return z[f"{split}_images"][int(idx)]
