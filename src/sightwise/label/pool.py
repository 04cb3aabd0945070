"""The pool: the images waiting for labels.

A pool is a folder. Without a queue file it holds every image below it (any depth, hidden
files skipped), in path order. With a queue file it holds exactly the images the queue
names, in the queue's order (highest `priority` first when given) — the shape a monitoring
alert writes:

    queue/
      queue.jsonl        one JSON object per line:
                         {"path": "images/ab12.png",      required unless only sha256 is known
                          "sha256": "...", "priority": 0.93, "reason": "drift window 41",
                          "predicted": "scratch", "probability": 0.41, "model_version": "3"}
      images/ab12.png    the kept images (paths are relative to the queue folder)

`queue.csv` with a `path` column (other columns kept as metadata) works the same way. An
entry whose path points outside the folder is refused (the labelling server would otherwise
serve any file the user can read); an entry naming only a sha256 (images not kept) or a
missing file is reported and skipped.

The monitor's labelling queue (`LOG/labelling-queue/`, see `sightwise.monitor.alerts`) is
read as it is: one folder per alert with `items.jsonl` (the kept image under `image`) and
`alert.json`. Its images become one pool, each image once (alerts overlap), least confident
first, with the model's guess as the suggestion.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from sightwise.data.decode import is_image_path
from sightwise.errors import SightwiseError

QUEUE_FILES = ("queue.jsonl", "queue.csv")


class PoolError(SightwiseError):
    """The pool cannot be read, or a path does not belong to it."""


@dataclass(frozen=True)
class PoolItem:
    path: Path  # absolute, resolved
    rel: str  # relative to the pool root, with '/'
    meta: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass
class Pool:
    root: Path
    items: list[PoolItem]
    notes: list[str] = field(default_factory=list)
    queue_file: str | None = None

    def __post_init__(self) -> None:
        self._index = {it.path: i for i, it in enumerate(self.items)}

    def __len__(self) -> int:
        return len(self.items)

    def index_of(self, path: str | Path) -> int:
        """Position of `path` (absolute, or relative to the root); PoolError otherwise."""
        p = Path(path)
        p = (p if p.is_absolute() else self.root / p).resolve()
        if p not in self._index:
            where = "outside the pool" if not _inside(p, self.root) else "not in the pool"
            raise PoolError(f"{path}: {where} ({self.root})")
        return self._index[p]

    @classmethod
    def from_paths(cls, paths: list[str | Path], metas: list[dict] | None = None,
                   root: str | Path | None = None) -> Pool:
        """A pool of given files (the audit's suspects): root = their common folder."""
        resolved = [Path(p).resolve() for p in paths]
        if not resolved:
            raise PoolError("no images to label")
        base = Path(root).resolve() if root else Path(os.path.commonpath(
            [str(p.parent) for p in resolved]))
        metas = metas or [{} for _ in resolved]
        items, seen = [], set()
        for p, m in zip(resolved, metas, strict=True):
            if p in seen:
                continue
            seen.add(p)
            items.append(PoolItem(p, Path(os.path.relpath(p, base)).as_posix(), dict(m)))
        return cls(base, items)


def _inside(p: Path, root: Path) -> bool:
    try:
        p.relative_to(root)
        return True
    except ValueError:
        return False


def read_pool(folder: str | Path) -> Pool:
    root = Path(folder)
    if not root.is_dir():
        raise PoolError(f"pool not found: {root} (give a folder of images or a queue folder)")
    root = root.resolve()
    for name in QUEUE_FILES:
        if (root / name).is_file():
            return _read_queue(root, name, _queue_records(root, name))
    alerts = _alert_folders(root)
    if alerts:
        return _read_queue(root, "alerts", _alert_records(alerts))
    items = [PoolItem(f.resolve(), f.relative_to(root).as_posix())
             for f in sorted(root.rglob("*"))
             if f.is_file() and is_image_path(f) and not _hidden(f.relative_to(root))]
    if not items:
        raise PoolError(f"{root}: no images found (looked for .png, .jpg, .bmp, .tif, .webp)")
    return Pool(root, items)


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _queue_records(root: Path, name: str) -> list[tuple[int, dict]]:
    path = root / name
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        if name.endswith(".jsonl"):
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise PoolError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
                if not isinstance(rec, dict):
                    raise PoolError(f"{path}:{lineno}: expected a JSON object")
                out.append((lineno, rec))
        else:
            reader = csv.DictReader(f)
            if "path" not in (reader.fieldnames or []):
                raise PoolError(f"{path}: needs a 'path' column")
            out = [(lineno, dict(rec)) for lineno, rec in enumerate(reader, start=2)]
    return out


def _alert_folders(root: Path) -> list[Path]:
    """The monitor's finished alert folders (a name starting with '.' is being written)."""
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / "items.jsonl").is_file())


def _alert_records(folders: list[Path]) -> list[tuple[str, dict]]:
    """Queue records from the monitor's alert folders: each image once (by sha256)."""
    out, seen = [], set()
    for folder in folders:
        try:
            alert = json.loads((folder / "alert.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            alert = {}
        for lineno, rec in _queue_records(folder, "items.jsonl"):
            sha = rec.get("sha256")
            if sha in seen:
                continue  # an earlier alert queued it too
            seen.add(sha)
            where = {"path": f"{folder.name}/{rec['image']}"} if rec.get("image") else {}
            conf = _priority(rec.get("confidence"))
            out.append((f"{folder.name}/items.jsonl:{lineno}", {
                **where, "sha256": sha, "source": rec.get("source"),
                "priority": None if conf is None else round(1.0 - conf, 6),
                "reason": f"drift window {rec.get('window')} (alert {folder.name})",
                "suggested": rec.get("predicted"), "suggested_p": conf,
                "model_version": alert.get("version")}))
    return out


def _read_queue(root: Path, name: str, records) -> Pool:
    items, notes, seen = [], [], set()
    priorities = []
    for lineno, rec in records:
        where = f"{name}:{lineno}" if isinstance(lineno, int) else lineno
        rel = rec.get("path") or rec.get("file")
        if not rel:
            if rec.get("sha256"):
                src = f" (its file: {rec['source']})" if rec.get("source") else ""
                notes.append(f"{where}: image {str(rec['sha256'])[:12]}… was not kept "
                             f"(only its sha256 is queued){src}; skipped")
                continue
            raise PoolError(f"{root / name}:{lineno}: entry has no 'path'")
        p = (root / str(rel)).resolve()
        if not _inside(p, root):
            raise PoolError(f"{root / name}:{lineno}: path {rel!r} is outside the pool "
                            f"folder {root}")
        if not p.is_file():
            notes.append(f"{where}: {rel} is missing; skipped")
            continue
        if p in seen:
            continue
        seen.add(p)
        meta = {k: v for k, v in rec.items() if k not in ("path", "file")}
        items.append(PoolItem(p, p.relative_to(root).as_posix(), meta))
        priorities.append(_priority(meta.get("priority")))
    if not items:
        raise PoolError(f"{root / name}: the queue names no available image")
    if any(v is not None for v in priorities):
        order = sorted(range(len(items)), key=lambda i: -(priorities[i] or 0.0))
        items = [items[i] for i in order]
    return Pool(root, items, notes, queue_file=name)


def _priority(value) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None
