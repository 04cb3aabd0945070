"""`sightwise data import` / `data export`: move labels between our labels CSV, datasets,
Label Studio, CVAT, folder-per-class and a CSV manifest.

Import validates the whole file before appending a single row (an unknown class or an image
outside the pool stops it with the file untouched), then appends through LabelStore, so an
import is one more batch of answers in the same history.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from sightwise.core import atomic_write_bytes, atomic_write_text
from sightwise.errors import SightwiseError
from sightwise.label.formats import (
    LS_PREFIX,
    FormatError,
    Record,
    cvat_xml,
    label_studio_config,
    label_studio_tasks,
    read_cvat,
    read_label_studio,
)
from sightwise.label.pool import read_pool
from sightwise.label.store import (
    HEADER,
    SKIP,
    Answer,
    LabelStore,
    final_labels,
    now_utc,
    read_answers,
    replay,
)

FORMATS = ("label-studio", "cvat", "folder", "csv")


def guess_format(path: str | Path, given: str | None) -> str:
    if given:
        if given not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {given!r}")
        return given
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        return "label-studio"
    if suffix == ".xml":
        return "cvat"
    if suffix == ".csv":
        return "csv"
    raise ValueError(f"cannot tell the format of {path} from its name; pass --format")


def import_labels(source: str, pool_dir: str, out: str, *, fmt: str | None = None,
                  classes: list[str] | None = None) -> dict:
    """Append the labels of a Label Studio / CVAT file to OUT; returns counts."""
    fmt = guess_format(source, fmt)
    pool = read_pool(pool_dir)
    if fmt == "label-studio":
        records = read_label_studio(source, pool, classes)
    elif fmt == "cvat":
        records = read_cvat(source, pool, classes)
    else:
        raise ValueError("import reads label-studio (.json) or cvat (.xml) files")
    for r in records:
        if r.label not in (None, SKIP) and (r.label.startswith("!") or any(
                ch in r.label for ch in "/\\\n\r\t") or not r.label.strip()):
            raise FormatError(f"{source}: label {r.label!r} for {r.path.name} cannot be a class "
                              "name (empty, starts with '!', or holds slashes or line breaks)")
    with LabelStore(out) as store:
        stamp = now_utc()
        rows = [Answer(store.key(r.path), r.label, r.annotator or fmt, r.time or stamp,
                       r.model_version, r.suggested, r.suggested_p)
                for r in records if r.label is not None]
        for row in rows:  # validated above: every path is in the pool, every class known
            store.append(row)
    labelled = sum(r.label not in (None, SKIP) for r in records)
    return {"format": fmt, "images": len({r.path for r in records}), "labels": labelled,
            "skips": sum(r.label == SKIP for r in records),
            "predictions_only": sum(r.label is None for r in records), "rows_written": len(rows)}


# -- export ------------------------------------------------------------------------------------


def _is_labels_csv(path: Path) -> bool:
    if path.suffix.lower() != ".csv" or not path.is_file():
        return False
    with open(path, encoding="utf-8", newline="") as f:
        first = next(csv.reader(f), [])
    return tuple(h.strip().lower() for h in first) == HEADER


def gather(source: str, *, unlabelled: bool = False, labels: str = "top"
           ) -> tuple[list[Record], list[str]]:
    """(records, classes) from our labels CSV, any dataset `train` reads, or (with
    `unlabelled`) a pool folder."""
    src = Path(source)
    if unlabelled:
        pool = read_pool(src)
        return [Record(it.path) for it in pool.items], []
    if _is_labels_csv(src):
        answers = read_answers(src)
        final = final_labels(answers)
        base = src.parent.resolve()
        latest = {p: s[-1] for p, s in replay(answers).items() if s}
        records = [Record((base / p).resolve() if not Path(p).is_absolute() else Path(p), label,
                          latest[p].annotator, latest[p].time, latest[p].model_version,
                          latest[p].suggested, latest[p].suggested_p)
                   for p, label in final.items()]
        return records, sorted({r.label for r in records})
    from sightwise.data.datasets import NPZ_SCHEME, load_dataset

    ds = load_dataset(src, labels=labels)
    if ds.samples and ds.samples[0].source.startswith(NPZ_SCHEME):
        raise SightwiseError(f"{src}: images inside an .npz have no file to point to; export "
                             "a folder or CSV dataset")
    return [Record(Path(s.source), ds.classes[s.label]) for s in ds.samples], list(ds.classes)


def with_predictions(records: list[Record], bundle: str, *, progress: bool = True) -> list[Record]:
    """Records with the bundle's top class and calibrated probability as the prediction."""
    from dataclasses import replace

    from sightwise.label.suggest import bundle_version
    from sightwise.runtime import Predictor

    pred = Predictor(bundle)
    version = bundle_version(pred.bundle.path)
    answers = pred.predict_paths([r.path for r in records], top_k=1)
    return [replace(r, model_version=version, suggested=a.top[0].label,
                    suggested_p=round(a.top[0].probability, 6)) if a.top else r
            for r, a in zip(records, answers, strict=True)]


def export_labels(records: list[Record], classes: list[str], out: str, fmt: str, *,
                  root: str | None = None, image_prefix: str = LS_PREFIX,
                  log: Callable[[str], None] = print) -> Path:
    out_path = Path(out)
    if fmt in ("label-studio", "cvat"):
        base = Path(root).resolve() if root else _common_root(records)
        rel = lambda p: Path(os.path.relpath(p, base)).as_posix()  # noqa: E731
        if fmt == "label-studio":
            tasks = label_studio_tasks(records, lambda p: image_prefix + rel(p))
            import json

            atomic_write_text(out_path, json.dumps(tasks, indent=2) + "\n")
            config = out_path.with_suffix(".config.xml")
            atomic_write_text(config, label_studio_config(classes or _labels_of(records)))
            log(f"labelling config for the Label Studio project: {config}")
        else:
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            atomic_write_bytes(out_path, cvat_xml(records, classes or _labels_of(records), rel,
                                                  dumped=stamp))
        log(f"image paths are relative to {base}")
        return out_path
    labelled = [r for r in records if r.label not in (None, SKIP)]
    if fmt == "csv":
        return _export_csv(labelled, out_path)
    if fmt == "folder":
        return _export_folder(labelled, out_path)
    raise ValueError(f"format must be one of {', '.join(FORMATS)}")


def _labels_of(records: list[Record]) -> list[str]:
    return sorted({r.label for r in records if r.label not in (None, SKIP)}
                  | {r.suggested for r in records if r.suggested})


def _common_root(records: list[Record]) -> Path:
    if not records:
        raise FormatError("nothing to export")
    return Path(os.path.commonpath([str(Path(r.path).resolve().parent) for r in records]))


def _export_csv(records: list[Record], out: Path) -> Path:
    """A manifest `train` reads: path,label with paths relative to the CSV's folder."""
    base = out.parent.resolve()
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "label"])
    for r in records:
        w.writerow([Path(os.path.relpath(Path(r.path).resolve(), base)).as_posix(), r.label])
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, buf.getvalue())
    return out


def _export_folder(records: list[Record], out: Path) -> Path:
    """OUT/<class>/<file>; a name taken twice in one class gets a numbered suffix."""
    if out.exists() and any(out.iterdir()):
        raise SightwiseError(f"{out} exists and is not empty; export into a new folder")
    used: set[Path] = set()
    for r in records:
        dst = out / r.label / Path(r.path).name
        k = 1
        while dst in used:
            dst = dst.with_name(f"{Path(r.path).stem}_{k}{Path(r.path).suffix}")
            k += 1
        used.add(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(r.path, dst)
    return out
