"""`sightwise inspect score` over folders of any size: streamed, on this machine or on Ray.

Writes what `sightwise.anomaly.scoring.score_folder` writes (overlays/<name>.png,
scores.csv, scores.json with the same fields) but batch by batch: files are listed lazily,
decoded ahead by the bounded pool, scored, and their rows appended to a journal that is
renamed to scores.csv at the end; scores.json is then streamed from it. Memory stays flat
in the number of images. The local engine writes rows in path order, Ray in the order its
actors finish. Unreadable images get a row with their error, never stop the run.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sightwise.anomaly.detector import Detector, png_bytes
from sightwise.bundle import atomic_write_bytes
from sightwise.scale.batch import default_workers
from sightwise.scale.sources import Loaded, batched, count_paths, decoded, iter_paths, load_file

COLUMNS = ["path", "score", "verdict", "overlay", "error"]


def overlay_name(file: str | Path, root: Path) -> str:
    """overlays/ file name of an image: its path under `root` joined by '__'.

    >>> overlay_name("data/a/b.png", Path("data")), overlay_name("x/c.png", Path("x/c.png"))
    ('a__b.png', 'c.png')
    """
    file = Path(file)
    rel = file.relative_to(root) if file != root and file.is_relative_to(root) else Path(file.name)
    return "__".join(rel.with_suffix("").parts) + ".png"


def inspect_items(detector: Detector, items: list[Loaded], root: Path) -> dict:
    """Columns path, score (NaN when none), verdict, error, overlay (name) and png (bytes)
    of one batch."""
    ok = [it for it in items if it.image is not None]
    results = dict(zip((id(it) for it in ok), detector.inspect([it.image for it in ok]),
                       strict=True))
    cols = {c: [] for c in ("path", "score", "verdict", "error", "overlay", "png")}
    for it in items:
        r = results.get(id(it))
        name = overlay_name(it.path, root) if r is not None else ""
        cols["path"].append(it.path)
        cols["score"].append(r.score if r is not None else np.nan)
        cols["verdict"].append(r.verdict if r is not None else "")
        cols["error"].append(it.error or "")
        cols["overlay"].append(f"overlays/{name}" if name else "")
        cols["png"].append(png_bytes(detector.overlay(it.image, r.patch_map)) if r is not None
                           else b"")
    return {k: np.array(v, np.float64 if k == "score" else object) for k, v in cols.items()}


def inspect_columns(detector: Detector, images: str | Path, *, engine: str = "local",
                    batch_size: int = 16, threads: int | None = None,
                    workers: int | None = None, ray_address: str | None = None) -> Iterator[dict]:
    root = Path(images)
    paths = iter_paths([root], recursive=True)
    if engine == "ray":
        from sightwise.scale.ray_engine import InspectActor, ray_map

        yield from ray_map(paths, InspectActor, {"detector": str(detector.bundle.path),
                                                 "root": str(root)},
                           address=ray_address, batch_size=batch_size, threads=threads or 1,
                           on_refused=lambda items: inspect_items(detector, items, root))
        return
    if engine != "local":
        raise ValueError(f"engine must be local or ray, got {engine!r}")
    stream = decoded(paths, load_file, workers=workers or default_workers(), window=2 * batch_size)
    for items in batched(stream, batch_size):
        yield inspect_items(detector, items, root)


def score_stream(detector: Detector, images: str | Path, out: str | Path, *,
                 engine: str = "local", batch_size: int = 16, threads: int | None = None,
                 ray_address: str | None = None, progress: bool = True,
                 log: Callable[[str], None] = print) -> dict:
    """Score every image under `images` into `out`; returns {n, n_defect, n_error}."""
    root, out = Path(images), Path(out)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or folder")
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    journal = out / ".scores.csv.partial"
    counts = {"n": 0, "n_defect": 0, "n_error": 0}
    total = count_paths([root], recursive=True) if progress else None
    with open(journal, "w", newline="", encoding="utf-8") as f, \
            tqdm(total=total, unit="img", desc=f"inspect ({engine})", disable=not progress) as bar:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        for cols in inspect_columns(detector, root, engine=engine, batch_size=batch_size,
                                    threads=threads, ray_address=ray_address):
            _write_batch(w, cols, out, counts)
            f.flush()
            bar.update(len(cols["path"]))
    os.replace(journal, out / "scores.csv")
    _write_json(out, detector.threshold, counts)
    return counts


def _write_batch(w, cols: dict, out: Path, counts: dict) -> None:
    for i, path in enumerate(cols["path"]):
        if cols["overlay"][i]:
            atomic_write_bytes(out / cols["overlay"][i], bytes(cols["png"][i]))
        score = cols["score"][i]
        w.writerow([path, "" if np.isnan(score) else float(score), cols["verdict"][i],
                    cols["overlay"][i], cols["error"][i]])
        counts["n"] += 1
        counts["n_defect"] += cols["verdict"][i] == "defect"
        counts["n_error"] += bool(cols["error"][i])


def _write_json(out: Path, threshold: float, counts: dict) -> None:
    """scores.json (score_folder's shape), streamed from scores.csv row by row."""
    tmp = out / ".scores.json.partial"
    with open(out / "scores.csv", newline="", encoding="utf-8") as src, \
            open(tmp, "w", encoding="utf-8") as dst:
        head = {"threshold": threshold, **counts}
        dst.write(json.dumps(head, indent=2)[:-2] + ',\n  "images": [')
        for i, row in enumerate(csv.DictReader(src)):
            rec = {"path": row["path"], "score": float(row["score"]) if row["score"] else None,
                   "verdict": row["verdict"] or None, "overlay": row["overlay"] or None,
                   "error": row["error"] or None}
            dst.write(("," if i else "") + "\n    " + json.dumps(rec))
        dst.write("\n  ]\n}\n")
    os.replace(tmp, out / "scores.json")
