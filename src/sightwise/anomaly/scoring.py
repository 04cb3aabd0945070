"""`sightwise inspect score`: images -> scores, verdicts, overlay PNGs, CSV + JSON. Torch-free."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from sightwise.anomaly.detector import Detector, png_bytes
from sightwise.bundle import atomic_write_bytes
from sightwise.data.decode import decode_image, is_image_path
from sightwise.errors import ImageDecodeError


def list_images(path: str | Path) -> list[Path]:
    """One image file, or every image under a folder (recursively, sorted)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such file or folder")
    return sorted(f for f in p.rglob("*") if f.is_file() and is_image_path(f))


def _overlay_name(file: Path, root: Path) -> str:
    rel = file.relative_to(root) if root.is_dir() else Path(file.name)
    return "__".join(rel.with_suffix("").parts) + ".png"


def score_folder(detector: Detector, images: str | Path, out: str | Path,
                 batch_size: int = 16) -> list[dict]:
    """Score every image; write overlays/<name>.png, scores.csv and scores.json in `out`.
    Unreadable images get a row with an error and no score (DESIGN.md principle 5)."""
    root, out = Path(images), Path(out)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    files, rows = list_images(root), []
    for s in range(0, len(files), batch_size):
        decoded = []
        for f in files[s:s + batch_size]:
            try:
                decoded.append((f, decode_image(f)))
            except ImageDecodeError as exc:
                rows.append({"path": str(f), "score": None, "verdict": None,
                             "overlay": None, "error": str(exc)})
        results = detector.inspect([im for _, im in decoded])
        for (f, im), r in zip(decoded, results, strict=True):
            name = _overlay_name(f, root)
            atomic_write_bytes(out / "overlays" / name, png_bytes(detector.overlay(im, r.patch_map)))
            rows.append({"path": str(f), "score": r.score, "verdict": r.verdict,
                         "overlay": f"overlays/{name}", "error": None})
    rows.sort(key=lambda r: r["path"])
    _write_summary(out, rows, detector.threshold)
    return rows


def _write_summary(out: Path, rows: list[dict], threshold: float) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["path", "score", "verdict", "overlay", "error"])
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(out / "scores.csv", buf.getvalue().encode("utf-8"))
    summary = {"threshold": threshold, "n": len(rows),
               "n_defect": sum(r["verdict"] == "defect" for r in rows),
               "n_error": sum(r["error"] is not None for r in rows), "images": rows}
    atomic_write_bytes(out / "scores.json", json.dumps(summary, indent=2).encode("utf-8"))
