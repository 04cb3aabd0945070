"""The data stage: the dataset, the annotation tool's labels merged on top (with
provenance), stable splits, and validation -- written as one CSV manifest that `train` reads.

Labels CSV (``path,label,annotator,time,model_version,suggested,suggested_p``, the labelling
tool's append-only file): the last standing answer per image wins; ``!undo`` withdraws the
same annotator's latest answer for that image (anyone's if they gave none) and ``!skip``
leaves the image as it was. Paths resolve against the CSV's folder and must lie inside it
or the dataset (``[data] allow_outside = true`` lifts that). A labelled image already in the
dataset is "relabelled" (or "confirmed", same label); one that is not is "added".

Splits (``[data] split = "hash"``, the default): an image's split follows from its content
hash alone, so images added later join a split without moving any old one, and retraining
with another seed tests on the same images; identical files always share a split (no
leakage by construction). In a class too small to fill every split by chance, an empty
split gets the lowest-hash image of the class's largest split. Splits the dataset brings (train/val/test
folders, a split column) are kept. ``split = "seed"`` leaves splitting to `train`
(stratified, `split_seed`).
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm.auto import tqdm

from sightwise.core import atomic_write_bytes, sha256_bytes
from sightwise.data.decode import MAX_FILE_BYTES, decode_image, read_regular_file
from sightwise.errors import DataError, ImageDecodeError

LABEL_HEADER = ("path", "label", "annotator", "time", "model_version", "suggested", "suggested_p")
SKIP, UNDO = "!skip", "!undo"
VAL, TEST = 0.15, 0.15
MANIFEST_HEADER = ["path", "label", "split", "sha256", "origin", "annotator", "time",
                   "previous_label"]


@dataclass(frozen=True)
class Row:
    source: str  # absolute path
    label: str
    split: str | None
    sha256: str
    origin: str = "dataset"  # dataset | added | relabelled | confirmed
    annotator: str = ""
    time: str = ""
    previous_label: str = ""


# -- the labels file -------------------------------------------------------------------------


def read_labels(path: Path) -> tuple[dict[str, dict], int]:
    """({path as written: its standing answer}, number of images the annotators skipped)."""
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # a torn last line was never confirmed
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return {}, 0
    if tuple(h.strip().lower() for h in rows[0]) != LABEL_HEADER:
        raise DataError(f"{path}: not a labels file (header {rows[0]}, expected "
                        f"{','.join(LABEL_HEADER)})")
    standing: dict[str, list[dict]] = defaultdict(list)
    for lineno, rec in enumerate(rows[1:], start=2):
        if not rec:
            continue
        if len(rec) != len(LABEL_HEADER):
            raise DataError(f"{path}:{lineno}: expected {len(LABEL_HEADER)} columns, got {len(rec)}")
        answer = dict(zip(LABEL_HEADER, (c.strip() for c in rec), strict=True))
        stack = standing[answer["path"]]
        if answer["label"] != UNDO:
            stack.append(answer)
            continue
        mine = [i for i, a in enumerate(stack) if a["annotator"] == answer["annotator"]]
        if mine or stack:
            stack.pop(mine[-1] if mine else -1)
    final = {p: s[-1] for p, s in standing.items() if s and s[-1]["label"] != SKIP}
    skipped = sum(1 for s in standing.values() if s and s[-1]["label"] == SKIP)
    for p, a in final.items():
        if not a["label"] or a["label"].startswith("!"):
            raise DataError(f"{path}: image {p!r} has label {a['label']!r}, not a class name")
    return final, skipped


def _inside(path: Path, roots: list[Path]) -> bool:
    target = path.resolve()
    return any(target == r or r in target.parents for r in (x.resolve() for x in roots))


def _file_sha256(path: Path) -> str:
    try:
        return sha256_bytes(read_regular_file(path, MAX_FILE_BYTES))
    except (OSError, ImageDecodeError):
        return ""  # reported as a bad file by the decode check


def merge_labels(rows: list[Row], labels_path: Path, roots: list[Path], *,
                 allow_outside: bool) -> tuple[list[Row], dict]:
    """The dataset's rows with the labels file's answers applied, and what came from where."""
    answers, skipped = read_labels(labels_path)
    by_path = {str(Path(r.source).resolve()): i for i, r in enumerate(rows)}
    out = list(rows)
    outside, counts = [], Counter()
    for written, a in answers.items():
        p = Path(written).expanduser()
        full = p if p.is_absolute() else labels_path.parent / p
        if not allow_outside and not _inside(full, roots):
            outside.append(written)
            continue
        i = by_path.get(str(full.resolve()))
        who = {"annotator": a["annotator"], "time": a["time"]}
        if i is None:
            out.append(Row(str(full), a["label"], None, _file_sha256(full), "added", **who))
            counts["added"] += 1
        elif out[i].label != a["label"]:
            out[i] = replace(out[i], label=a["label"], origin="relabelled",
                             previous_label=out[i].label, **who)
            counts["relabelled"] += 1
        else:
            out[i] = replace(out[i], origin="confirmed", **who)
            counts["confirmed"] += 1
    if outside:
        raise DataError(f"{labels_path}: {len(outside)} labelled image(s) lie outside the "
                        f"dataset and the labels file's folder (e.g. {outside[0]}); set "
                        "[data] allow_outside = true to use them")
    return out, {"file": str(labels_path), "answers": len(answers), "skipped_by_annotator": skipped,
                 **{k: counts[k] for k in ("added", "relabelled", "confirmed")}}


# -- splits ----------------------------------------------------------------------------------


def hash_position(sha256: str, seed: int) -> float:
    """A uniform number in [0, 1) from the image's content and the split seed.

    >>> hash_position("ab" * 32, 0) == hash_position("ab" * 32, 0), 0 <= hash_position("0", 1) < 1
    (True, True)
    """
    return int(sha256_bytes(f"{seed}:{sha256}".encode())[:13], 16) / 16 ** 13


def hash_split(sha256: str, seed: int) -> str:
    u = hash_position(sha256, seed)
    return "test" if u < TEST else "val" if u < TEST + VAL else "train"


def stable_splits(rows: list[Row], seed: int) -> tuple[list[Row], list[str]]:
    """Rows without a split get their hash split; in a class of >= 3 distinct images, a
    split left empty by chance gets the lowest-hash image of the class's largest split."""
    out = [r if r.split else replace(r, split=hash_split(r.sha256 or r.source, seed))
           for r in rows]
    notes = []
    by_class: dict[str, dict[str, str]] = defaultdict(dict)  # class -> sha -> split
    for r in out:
        by_class[r.label].setdefault(r.sha256 or r.source, r.split)
    moves: dict[tuple[str, str], str] = {}
    for label, shas in sorted(by_class.items()):
        for split in ("train", "test", "val"):
            if len(shas) < 3 or split in shas.values():
                continue
            sizes = Counter(shas.values())
            donor = max(sizes, key=lambda sp: (sizes[sp], sp == "train"))
            pick = min((s for s, sp in shas.items() if sp == donor),
                       key=lambda s: hash_position(s, seed))
            shas[pick] = split
            moves[(label, pick)] = split
            notes.append(f"class {label!r}: no {split} image by hash; moved one from {donor}")
    if moves:
        out = [replace(r, split=moves[(r.label, r.sha256 or r.source)])
               if (r.label, r.sha256 or r.source) in moves else r for r in out]
    return out, notes


# -- validation ------------------------------------------------------------------------------


def find_bad_files(rows: list[Row], *, workers: int = 2, progress: bool = True) -> list[dict]:
    """Rows whose file cannot be decoded (by path, with the reason)."""
    def check(r: Row):
        if not r.sha256:
            return {"path": r.source, "reason": "not a readable regular file"}
        try:
            decode_image(r.source)
        except ImageDecodeError as exc:
            return {"path": r.source, "reason": str(exc)}
        return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(tqdm(pool.map(check, rows), total=len(rows), desc="check images",
                            unit="img", disable=not progress, leave=False))
    return [b for b in results if b]


def leakage_and_conflicts(rows: list[Row]) -> tuple[list[dict], list[dict]]:
    """Identical files (same sha256) across splits, and identical files with different
    labels (one of them is a labelling error)."""
    groups: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        if r.sha256:
            groups[r.sha256].append(r)
    leak = [{"sha256": h, "items": [[r.source, r.split] for r in g]} for h, g in groups.items()
            if len({r.split for r in g}) > 1 and all(r.split for r in g)]
    conflicts = [{"sha256": h, "items": [[r.source, r.label] for r in g]}
                 for h, g in groups.items() if len({r.label for r in g}) > 1]
    return leak, conflicts


def write_manifest(rows: list[Row], path: Path) -> str:
    """path,label,split,sha256 (what `train` reads) plus provenance; paths relative to the
    manifest's folder, so the work folder and the data can move together. Returns sha256."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(MANIFEST_HEADER)
    for r in sorted(rows, key=lambda r: r.source):
        try:
            shown = os.path.relpath(r.source, path.parent)
        except ValueError:  # another drive (Windows)
            shown = r.source
        w.writerow([Path(shown).as_posix(), r.label, r.split or "", r.sha256, r.origin,
                    r.annotator, r.time, r.previous_label])
    data = buf.getvalue().encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def dataset_rows(spec) -> tuple[list[Row], list[str], Path]:
    """The dataset as rows (the layouts `train` reads), its notes and its root."""
    from sightwise.data.datasets import NPZ_SCHEME, load_dataset

    ds = load_dataset(spec.data, labels=spec.class_from, allow_outside=spec.allow_outside)
    if any(s.source.startswith(NPZ_SCHEME) for s in ds.samples):
        raise DataError(f"{spec.data}: the pipeline merges labels into a CSV manifest of image "
                        "files; export the .npz arrays to a folder first")
    rows = [Row(str(Path(s.source).absolute()), ds.classes[s.label], s.split, s.sha256)
            for s in ds.samples]
    return rows, list(ds.notes), Path(ds.root)
